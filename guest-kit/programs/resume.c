/*
 * resume: a long ring-3 computation for the snapshot tests. It says it has
 * started, then runs `rounds=N` rounds (default 400,000,000) of an
 * xorshift64 stream folded through a 1 MiB table, so the result depends on
 * both the registers (the stream and accumulator live there) and memory
 * (the table): a VM restored from a mid-run capture prints the same result
 * as an uninterrupted run only if both came back intact.
 *
 *   KIT resume started
 *   KIT resume result=0x0123456789abcdef
 */
#include "kit.h"

KIT_PROGRAM("resume");

#define TABLE_BITS 17
static uint64_t table[1u << TABLE_BITS];

static uint64_t fold(uint64_t rounds)
{
    uint64_t x = 0x9E3779B97F4A7C15ull, acc = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < rounds; i++) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        uint64_t *slot = &table[(x * 0x2545F4914F6CDD1Dull) >> (64 - TABLE_BITS)];
        *slot += x ^ acc;
        acc = (acc ^ *slot) * 0x100000001b3ull;
    }
    return acc;
}

int kit_main(void)
{
    uint64_t rounds = kit_cmdline_u64("rounds", 400000000);
    kit_printf("KIT resume started rounds=%lu\n", rounds);
    uint64_t result = fold(rounds);
    kit_printf("KIT resume result=0x%016lx\n", result);
    return 0;
}
