/*
 * blk-bench (P4): virtio-blk throughput from the kit driver, polled.
 *
 *   randread4k   4 KiB reads at random 4 KiB-aligned offsets, qd=32
 *   seqread1m    1 MiB sequential reads, seq_qd=4 in flight
 *   seqwrite1m   1 MiB sequential writes, seq_qd=4 in flight (writes=0: skip)
 *   randwrite4k  4 KiB writes at random 4 KiB-aligned offsets, qd=32, only
 *                with randwrite=1 (last: it changes the disk's contents)
 *
 * Each phase runs for rand_ms / seq_ms (default 3000) over the first
 * span_mb MiB of the disk (default: all of it) and prints
 *
 *   BENCH blk randread4k iops=N mb_s=X.Y ios=N ms=N qd=32 kicks=N suppressed=N
 *   BENCH blk seqread1m iops=N mb_s=X.Y ...
 *
 * mb_s is 10^6 bytes per second. Time comes from the TSC at the rate
 * kit_tsc_rate() finds (printed once: tsc_hz=, tsc_source=). event_idx=0 /
 * indirect=0 / qsize=N change the ring set-up (virtio.h).
 */
#include "blk_common.h"

KIT_PROGRAM("blk-bench");

static struct blk b;
static uint16_t buf_of_head[BLK_MAX_SLOTS];

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t xorshift(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void phase(const char *name, uint32_t type, uint32_t bs, uint32_t qd, uint64_t ms, bool random,
                  uint64_t span_sectors, uint8_t *pool)
{
    uint64_t hz = kit_tsc_rate(NULL);
    uint64_t sectors_per_io = bs / 512, slots = span_sectors / sectors_per_io, next_seq = 0;
    if (!slots)
        kit_fail("%s: disk smaller than one request", name);
    uint64_t kicks0 = b.q->kicks, supp0 = b.q->kicks_suppressed;
    uint64_t ios = 0, inflight = 0, errors = 0;
    uint64_t t0 = rdtsc(), stop = t0 + hz / 1000 * ms, hard_stop = stop + hz * 30;
    uint64_t t_end = t0;
    bool running = true;
    for (uint32_t i = 0; i < qd; i++) {
        uint64_t slot = random ? xorshift() % slots : next_seq++ % slots;
        int head = blk_submit(&b, type, slot * sectors_per_io, pool + (size_t)i * bs, bs);
        if (head < 0)
            kit_fail("%s: ring full at qd %u", name, i);
        buf_of_head[head] = (uint16_t)i;
        inflight++;
    }
    virtq_kick(b.q);
    while (inflight) {
        uint32_t id;
        bool any = false;
        while (virtq_get(b.q, &id, NULL)) {
            any = true;
            inflight--;
            ios++;
            if (id >= BLK_MAX_SLOTS)
                kit_fail("%s: used id %u out of range", name, id);
            if (b.slots[id].status != VIRTIO_BLK_S_OK)
                errors++;
            uint16_t bi = buf_of_head[id];
            if (running) {
                uint64_t slot = random ? xorshift() % slots : next_seq++ % slots;
                int head = blk_submit(&b, type, slot * sectors_per_io, pool + (size_t)bi * bs, bs);
                if (head < 0)
                    kit_fail("%s: ring full on resubmit", name);
                buf_of_head[head] = bi;
                inflight++;
            }
        }
        uint64_t now = rdtsc();
        if (any) {
            virtq_kick(b.q);
            t_end = now;
        }
        if (running && now >= stop)
            running = false;
        if (now >= hard_stop)
            kit_fail("%s: %lu requests still in flight 30 s after the end", name, inflight);
    }
    uint64_t ns = kit_tsc_to_ns(t_end - t0);
    if (!ns)
        ns = 1;
    uint64_t iops = ios * 1000000000ull / ns;
    uint64_t mb10 = ios * bs / (ns / 10000 ? ns / 10000 : 1);   /* bytes * 1e4 / ns = MB/s x 10 */
    kit_printf("BENCH blk %s iops=%lu mb_s=%lu.%lu ios=%lu ms=%lu qd=%u errors=%lu kicks=%lu suppressed=%lu event_idx=%d indirect=%d\n",
               name, iops, mb10 / 10, mb10 % 10, ios, ns / 1000000, qd, errors, b.q->kicks - kicks0,
               b.q->kicks_suppressed - supp0, b.vd.event_idx, b.use_indirect && b.vd.indirect);
    if (errors)
        kit_fail("%s: %lu requests failed", name, errors);
}

int kit_main(void)
{
    const char *src;
    uint64_t hz = kit_tsc_rate(&src);
    if (!blk_open(&b, 128))
        kit_fail("no usable virtio-blk device");
    b.use_indirect = kit_cmdline_u64("indirect", 1) != 0;
    uint64_t span = kit_cmdline_u64("span_mb", 0) * 2048;
    if (!span || span > b.capacity)
        span = b.capacity;
    uint32_t qd = (uint32_t)kit_cmdline_u64("qd", 32);
    uint32_t seq_qd = (uint32_t)kit_cmdline_u64("seq_qd", 4);
    uint32_t max_qd = b.q->size / (b.vd.indirect && b.use_indirect ? 1 : 3);
    if (!qd || qd > max_qd || !seq_qd || seq_qd > max_qd)
        kit_fail("qd=%u seq_qd=%u: 1..%u", qd, seq_qd, max_qd);
    uint64_t rand_ms = kit_cmdline_u64("rand_ms", 3000), seq_ms = kit_cmdline_u64("seq_ms", 3000);
    kit_printf("BENCH blk setup tsc_hz=%lu tsc_source=%s capacity=%lu span_sectors=%lu qsize=%u\n", hz, src,
               b.capacity, span, b.q->size);
    uint8_t *small = kit_alloc((size_t)qd * 4096, 4096);
    uint8_t *big = kit_alloc((size_t)seq_qd << 20, 4096);
    if (rand_ms)
        phase("randread4k", VIRTIO_BLK_T_IN, 4096, qd, rand_ms, true, span, small);
    if (seq_ms) {
        phase("seqread1m", VIRTIO_BLK_T_IN, 1 << 20, seq_qd, seq_ms, false, span, big);
        if (kit_cmdline_u64("writes", 1)) {
            for (size_t i = 0; i < ((size_t)seq_qd << 20); i += 8)
                *(uint64_t *)(big + i) = i ^ 0x5a5a5a5a5a5a5a5aull;
            phase("seqwrite1m", VIRTIO_BLK_T_OUT, 1 << 20, seq_qd, seq_ms, false, span, big);
            if (virtio_has(&b.vd, VIRTIO_BLK_F_FLUSH)) {
                uint64_t t0 = rdtsc();
                int st = blk_sync(&b, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
                kit_printf("BENCH blk flush status=%d ms=%lu\n", st, kit_tsc_to_ns(rdtsc() - t0) / 1000000);
            }
        }
    }
    if (rand_ms && kit_cmdline_u64("randwrite", 0))
        phase("randwrite4k", VIRTIO_BLK_T_OUT, 4096, qd, rand_ms, true, span, small);
    return 0;
}
