/* The compute program's work, shared with tools/compute-ref.c (which runs it
   on the host to derive the expected constants). Plain C, no libc. */
#ifndef COMPUTE_WORK_H
#define COMPUTE_WORK_H

#include <stdint.h>

#define SIEVE_LIMIT 2000000u
#define HASH_ROUNDS 20000000u

static uint8_t composite[SIEVE_LIMIT];

/* Primes below SIEVE_LIMIT: count and sum (sieve of Eratosthenes). */
static void sieve(uint64_t *count, uint64_t *sum)
{
    uint64_t c = 0, s = 0;
    for (uint32_t i = 2; i < SIEVE_LIMIT; i++) {
        if (composite[i])
            continue;
        c++;
        s += i;
        for (uint64_t j = (uint64_t)i * i; j < SIEVE_LIMIT; j += i)
            composite[j] = 1;
    }
    *count = c;
    *sum = s;
}

/* xorshift64* stream folded into an FNV-1a style accumulator. */
static uint64_t hash_rounds(void)
{
    uint64_t x = 0x9E3779B97F4A7C15ull, acc = 0xcbf29ce484222325ull;
    for (uint32_t i = 0; i < HASH_ROUNDS; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        acc = (acc ^ (x * 0x2545F4914F6CDD1Dull)) * 0x100000001b3ull;
    }
    return acc;
}

#endif
