/* Host reference for programs/compute.c: prints the expected constants.
   cc -O2 -o /tmp/compute-ref tools/compute-ref.c && /tmp/compute-ref */
#include <stdio.h>
#include "../programs/compute_work.h"

int main(void)
{
    uint64_t count, sum;
    sieve(&count, &sum);
    printf("primes=%llu sum=%llu hash=0x%016llx\n", (unsigned long long)count,
           (unsigned long long)sum, (unsigned long long)hash_rounds());
    return 0;
}
