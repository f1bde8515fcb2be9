/*
 * net-bench (P5): bulk Ethernet frames through virtio-net and the tap, with
 * benchmarks/kit-net-peer.py bench on the host side of the tap.
 *
 *   1. hello: broadcast 'H' every 100 ms until the peer answers 'A'
 *      (hello_ms, default 30000)
 *   2. TX: send 'T' frames of tx_len bytes (default 1514) as fast as the
 *      ring allows for tx_ms (default 3000), then 'E' (seq = frames sent)
 *   3. RX: count the peer's 'R' frames until its 'F' or rx_idle_ms
 *      (default 3000) without one
 *
 *   BENCH net tx frames=N bytes=N ms=N pps=N mbit_s=X.Y kicks=N suppressed=N
 *   BENCH net rx frames=N bytes=N ms=N pps=N mbit_s=X.Y lost=N kicks=N
 *
 * bytes are Ethernet frame bytes (no FCS); mbit_s is 10^6 bits per second
 * of those; rx lost = highest sequence + 1 - frames. event_idx=0 and
 * qsize=N change the rings (virtio.h).
 */
#include "net_common.h"

KIT_PROGRAM("net-bench");

static struct net n;
static uint8_t peer[6];

static int handle_rx(char want, uint64_t *seq_max, uint64_t *bytes, bool *finished)
{
    uint8_t *f;
    uint32_t l;
    uint16_t slot;
    int got = 0;
    while (net_rx_get(&n, &f, &l, &slot)) {
        if (net_is_kit(f, l, 0)) {
            if (f[18] == (uint8_t)want) {
                got++;
                if (bytes)
                    *bytes += l;
                uint32_t s = net_get_u32(f + 19);
                if (seq_max && s + 1ull > *seq_max)
                    *seq_max = s + 1ull;
                if (want == 'A')
                    memcpy(peer, f + 6, 6);
            } else if (f[18] == 'F' && finished) {
                *finished = true;
            }
        }
        net_post_rx(&n, slot);
    }
    if (n.rx->avail_idx != n.rx->published)
        virtq_kick(n.rx);
    return got;
}

static void send_one(const uint8_t *dst, char kind, uint32_t seq, uint32_t len)
{
    uint8_t *f;
    uint64_t t0 = rdtsc();
    while (!(f = net_tx_frame(&n))) {
        virtq_kick(n.tx);
        if (rdtsc() - t0 > kit_tsc_rate(NULL) * 5)
            kit_fail("TX ring stuck");
    }
    net_tx_commit(&n, net_build(f, dst, n.mac, kind, seq, len));
    virtq_kick(n.tx);
}

static void print_rate(const char *dir, uint64_t frames, uint64_t bytes, uint64_t ns)
{
    if (!ns)
        ns = 1;
    uint64_t mbit10 = bytes * 8 / (ns / 10000 ? ns / 10000 : 1);        /* bits * 1e4 / ns */
    kit_printf("BENCH net %s frames=%lu bytes=%lu ms=%lu pps=%lu mbit_s=%lu.%lu", dir, frames, bytes, ns / 1000000,
               (uint64_t)(frames * 1000000000ull / ns), mbit10 / 10, mbit10 % 10);
}

int kit_main(void)
{
    const char *src;
    uint64_t hz = kit_tsc_rate(&src);
    if (!net_open(&n))
        kit_fail("no usable virtio-net device");
    uint64_t tx_ms = kit_cmdline_u64("tx_ms", 3000), idle_ms = kit_cmdline_u64("rx_idle_ms", 3000);
    uint32_t tx_len = (uint32_t)kit_cmdline_u64("tx_len", 1514);
    kit_printf("BENCH net setup tsc_hz=%lu tsc_source=%s event_idx=%d qsize=%u\n", hz, src, n.vd.event_idx,
               n.rx->size);

    /* 1. hello */
    uint64_t t0 = rdtsc(), limit = hz / 1000 * kit_cmdline_u64("hello_ms", 30000), last = 0;
    while (!handle_rx('A', NULL, NULL, NULL)) {
        if (rdtsc() - last > hz / 10) {
            send_one(net_broadcast, 'H', 0, 60);
            last = rdtsc();
        }
        net_tx_reclaim(&n);
        if (rdtsc() - t0 > limit)
            kit_fail("no answer from the host peer (kit-net-peer.py bench)");
        cpu_relax();
    }
    kit_printf("KIT net-bench peer=%02x:%02x:%02x:%02x:%02x:%02x\n", peer[0], peer[1], peer[2], peer[3], peer[4],
               peer[5]);
    /* Let the peer's extra 'A' frames arrive before timing. */
    for (uint64_t w = rdtsc(); rdtsc() - w < hz / 5;)
        handle_rx('A', NULL, NULL, NULL);

    /* 2. TX */
    uint64_t kicks0 = n.tx->kicks, supp0 = n.tx->kicks_suppressed;
    uint64_t sent = 0, frames0 = n.tx_frames, bytes0 = n.tx_bytes;
    t0 = rdtsc();
    uint64_t stop = t0 + hz / 1000 * tx_ms;
    while (rdtsc() < stop) {
        uint8_t *f;
        int batch = 0;
        while ((f = net_tx_frame(&n)) && batch < 64) {
            net_tx_commit(&n, net_build(f, peer, n.mac, 'T', (uint32_t)sent++, tx_len));
            batch++;
        }
        virtq_kick(n.tx);
        net_tx_reclaim(&n);
        handle_rx(0, NULL, NULL, NULL);                  /* keep RX drained */
    }
    uint64_t t_drain = rdtsc();
    while (n.tx->num_free != n.tx->size) {
        net_tx_reclaim(&n);
        if (rdtsc() - t_drain > hz * 10)
            kit_fail("TX not completed: %u descriptors outstanding", n.tx->size - n.tx->num_free);
    }
    uint64_t ns = kit_tsc_to_ns(rdtsc() - t0);
    print_rate("tx", n.tx_frames - frames0, n.tx_bytes - bytes0, ns);
    kit_printf(" kicks=%lu suppressed=%lu\n", n.tx->kicks - kicks0, n.tx->kicks_suppressed - supp0);
    for (int i = 0; i < 3; i++)
        send_one(peer, 'E', (uint32_t)sent, 60);

    /* 3. RX */
    uint64_t rx_frames = 0, rx_bytes = 0, seq_max = 0, rkicks0 = n.rx->kicks;
    bool finished = false;
    uint64_t first = 0, last_rx = 0, wait_start = rdtsc();
    uint64_t idle = hz / 1000 * idle_ms;
    while (!finished) {
        int got = handle_rx('R', &seq_max, &rx_bytes, &finished);
        uint64_t now = rdtsc();
        if (got) {
            if (!first)
                first = now;
            last_rx = now;
            rx_frames += (uint64_t)got;
        }
        if (first && now - last_rx > idle)
            break;
        if (!first && now - wait_start > limit)
            kit_fail("no RX frames from the host peer");
        net_tx_reclaim(&n);
    }
    print_rate("rx", rx_frames, rx_bytes, kit_tsc_to_ns(last_rx - first));
    kit_printf(" lost=%lu kicks=%lu end=%s\n", seq_max > rx_frames ? seq_max - rx_frames : 0,
               n.rx->kicks - rkicks0, finished ? "finish" : "idle");
    return 0;
}
