/*
 * virtio-net: exchanges Ethernet frames with the host through the first
 * modern virtio-net PCI device (1af4:1041). Frames use EtherType 0x88B5 and
 * carry "KITN", a kind byte and a 32-bit big-endian sequence number after
 * the Ethernet header (see net_common.h).
 *
 *   send=N       (default 4) broadcast N frames of kind 'G', seq 0..N-1,
 *                len=L bytes each (default 128, 60..1514)
 *   echo=M       (default 0) then echo M received kit frames back: MACs
 *                swapped (dst = their source, src = our MAC), payload kept,
 *                kind 'P' changed to 'Q' (ping -> pong); other frames
 *                (IPv6 ND, ...) are counted as ignored
 *   timeout_ms=T (default 20000) for the echo phase
 *
 *   KIT virtio-net net mac=52:54:00:12:34:56 rxq=256 txq=256
 *   KIT virtio-net sent=4 len=128
 *   KIT virtio-net echoed=M received=R ignored=I
 */
#include "net_common.h"

KIT_PROGRAM("virtio-net");

static struct net n;

int kit_main(void)
{
    if (!net_open(&n))
        kit_fail("no usable virtio-net device");
    uint64_t send = kit_cmdline_u64("send", 4);
    uint32_t len = (uint32_t)kit_cmdline_u64("len", 128);
    uint64_t echo = kit_cmdline_u64("echo", 0);
    uint64_t timeout_ms = kit_cmdline_u64("timeout_ms", 20000);

    uint32_t flen = 0;
    for (uint64_t i = 0; i < send; i++) {
        uint8_t *f;
        uint64_t t0 = rdtsc();
        while (!(f = net_tx_frame(&n))) {
            virtq_kick(n.tx);
            if (rdtsc() - t0 > kit_tsc_rate(NULL) * 5)
                kit_fail("TX ring stuck after %lu frames", i);
        }
        flen = net_build(f, net_broadcast, n.mac, 'G', (uint32_t)i, len);
        net_tx_commit(&n, flen);
        virtq_kick(n.tx);
    }
    /* Wait for the device to take every frame. */
    uint64_t t0 = rdtsc();
    while (n.tx->num_free != n.tx->size) {
        net_tx_reclaim(&n);
        if (rdtsc() - t0 > kit_tsc_rate(NULL) * 5)
            kit_fail("TX frames not completed (%u of %u descriptors free)", n.tx->num_free, n.tx->size);
    }
    kit_printf("KIT virtio-net sent=%lu len=%u\n", send, flen);
    if (!echo)
        return 0;

    uint64_t echoed = 0, ignored = 0, received = 0;
    uint64_t limit = kit_tsc_rate(NULL) / 1000 * timeout_ms;
    t0 = rdtsc();
    while (echoed < echo) {
        uint8_t *f;
        uint32_t l;
        uint16_t slot;
        bool any = false;
        while (net_rx_get(&n, &f, &l, &slot)) {
            any = true;
            received++;
            if (!net_is_kit(f, l, 0) || l > NET_MAX_FRAME) {
                ignored++;
            } else {
                uint8_t *o;
                while (!(o = net_tx_frame(&n)))
                    virtq_kick(n.tx);
                memcpy(o, f + 6, 6);
                memcpy(o + 6, n.mac, 6);
                memcpy(o + 12, f + 12, l - 12);
                if (o[18] == 'P')
                    o[18] = 'Q';
                net_tx_commit(&n, l);
                echoed++;
            }
            net_post_rx(&n, slot);
        }
        if (any) {
            virtq_kick(n.tx);
            virtq_kick(n.rx);
        }
        net_tx_reclaim(&n);
        if (rdtsc() - t0 > limit)
            kit_fail("echoed %lu of %lu frames in %lu ms (received=%lu ignored=%lu)", echoed, echo, timeout_ms,
                     received, ignored);
        cpu_relax();
    }
    t0 = rdtsc();
    while (n.tx->num_free != n.tx->size && rdtsc() - t0 < kit_tsc_rate(NULL) * 5)
        net_tx_reclaim(&n);
    kit_printf("KIT virtio-net echoed=%lu received=%lu ignored=%lu\n", echoed, received, ignored);
    return 0;
}
