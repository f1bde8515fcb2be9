/*
 * compute: ring-3 CPU work with known answers: the primes below 2,000,000
 * (sieve over a 2 MB static array) and 20,000,000 rounds of an xorshift64*
 * hash. The expected constants come from tools/compute-ref.c on the host.
 *
 *   KIT compute primes=148933 sum=142913828922 hash=0x8687cf943c12ba5c cycles=C
 */
#include "kit.h"
#include "compute_work.h"

KIT_PROGRAM("compute");

#define EXPECT_PRIMES 148933u
#define EXPECT_SUM 142913828922ull
#define EXPECT_HASH 0x8687cf943c12ba5cull

int kit_main(void)
{
    uint64_t t0 = rdtsc();
    uint64_t count, sum;
    sieve(&count, &sum);
    uint64_t hash = hash_rounds();
    uint64_t cycles = rdtsc() - t0;
    kit_printf("KIT compute primes=%lu sum=%lu hash=0x%016lx cycles=%lu\n", count, sum, hash, cycles);
    if (count != EXPECT_PRIMES || sum != EXPECT_SUM)
        kit_fail("sieve: expected primes=%u sum=%llu", EXPECT_PRIMES, EXPECT_SUM);
    if (hash != EXPECT_HASH)
        kit_fail("hash: expected 0x%016llx", EXPECT_HASH);
    return 0;
}
