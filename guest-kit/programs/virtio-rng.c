/*
 * virtio-rng: reads "bytes=N" (default 4096) bytes from the first modern
 * virtio-rng PCI device (1af4:1044) in requests of at most 4 KiB and checks
 * that they are not constant (at least 64 distinct byte values in 4 KiB).
 *
 *   KIT virtio-rng read=4096 requests=1 distinct=256 first=...
 */
#include "virtio.h"

KIT_PROGRAM("virtio-rng");

int kit_main(void)
{
    struct virtio_dev vd;
    if (!virtio_find(VIRTIO_ID_RNG, 0, &vd))
        kit_fail("no virtio-rng device");
    if (!virtio_init(&vd, 0, 1, 64))
        kit_fail("virtio-rng initialisation failed");
    uint64_t want = kit_cmdline_u64("bytes", 4096);
    if (want == 0 || want > (16u << 20))
        kit_fail("bytes=%lu out of range", want);
    uint8_t *buf = kit_alloc(want, 4096);
    uint64_t got = 0, requests = 0;
    struct virtq *q = &vd.vq[0];
    while (got < want) {
        uint32_t chunk = want - got > 4096 ? 4096 : (uint32_t)(want - got);
        struct virtq_buf b = { (uintptr_t)(buf + got), chunk, true };
        if (virtq_add(q, &b, 1, false) < 0)
            kit_fail("ring full");
        virtq_kick(q);
        uint32_t len = 0;
        int r = virtq_wait(q, NULL, &len, 5000);
        if (r <= 0)
            kit_fail("no answer from the device (%s)", r < 0 ? "DEVICE_NEEDS_RESET" : "timeout");
        if (len > chunk)
            kit_fail("device wrote %u bytes into a %u-byte buffer", len, chunk);
        got += len;
        requests++;
    }
    bool seen[256] = { false };
    int distinct = 0;
    for (uint64_t i = 0; i < got && i < 4096; i++)
        if (!seen[buf[i]]) {
            seen[buf[i]] = true;
            distinct++;
        }
    kit_printf("KIT virtio-rng read=%lu requests=%lu distinct=%d first=%02x%02x%02x%02x%02x%02x%02x%02x\n",
               got, requests, distinct, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7]);
    uint64_t sample = got < 4096 ? got : 4096;
    if (distinct < (sample >= 1024 ? 64 : 2))
        kit_fail("data looks constant (%d distinct byte values)", distinct);
    return 0;
}
