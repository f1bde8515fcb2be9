/*
 * virtio-rng: reads "bytes=N" (default 4096) bytes from the first modern
 * virtio-rng PCI device (1af4:1044) in requests of at most 4 KiB and checks
 * that they are not constant (at least 64 distinct byte values in 4 KiB).
 *
 *   KIT virtio-rng read=4096 requests=1 distinct=256 first=...
 *
 * hostile=loop|oob|zerolen|oversize|wrongdir first submits one broken
 * request (two 2 KiB device-writable buffers made bad by
 * virtq_add_hostile; wrongdir: one device-readable buffer), prints
 * outcome=needs_reset|used|timeout, resets and re-initialises the device,
 * then reads as above. expect=handled (default: needs_reset, or used with
 * length 0) | needs_reset | any.
 */
#include "virtio.h"

KIT_PROGRAM("virtio-rng");

static void hostile(struct virtio_dev *vd, const char *kind, uint8_t *buf)
{
    struct virtq *q = &vd->vq[0];
    int head;
    if (!strncmp(kind, "wrongdir", 9)) {
        struct virtq_buf b = { (uintptr_t)buf, 4096, false };
        head = virtq_add(q, &b, 1, false);
    } else {
        struct virtq_buf b[2] = { { (uintptr_t)buf, 2048, true }, { (uintptr_t)buf + 2048, 2048, true } };
        head = virtq_add_hostile(q, kind, b, 2);
    }
    if (head < 0)
        kit_fail("unknown hostile kind '%s' (loop|oob|zerolen|oversize|wrongdir)", kind);
    virtq_kick(q);
    uint32_t id = 0, len = 0;
    int r = virtq_wait(q, &id, &len, kit_cmdline_u64("hostile_ms", 3000));
    uint8_t status = virtio_status(vd);
    const char *outcome = (r < 0 || (status & VIRTIO_STATUS_NEEDS_RESET)) ? "needs_reset" : r == 0 ? "timeout" : "used";
    kit_printf("KIT virtio-rng hostile=%s outcome=%s device_status=0x%x", kind, outcome, status);
    if (r > 0)
        kit_printf(" used_id=%u used_len=%u", id, len);
    kit_putc('\n');
    char expect[16] = "handled";
    kit_cmdline_str("expect", expect, sizeof expect);
    bool handled = outcome[0] == 'n' || (r > 0 && len == 0);
    bool good = !strncmp(expect, "any", 4) || (!strncmp(expect, "handled", 8) ? handled : !strncmp(expect, outcome, 16));
    if (!virtio_reset(vd))
        kit_fail("reset after hostile=%s did not complete", kind);
    if (!virtio_init(vd, 0, 1, 64))
        kit_fail("re-initialisation after hostile=%s failed", kind);
    if (!good)
        kit_fail("hostile=%s outcome=%s used_len=%u, expected %s", kind, outcome, len, expect);
}

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
    uint8_t *buf = kit_alloc(want < 4096 ? 4096 : want, 4096);
    char kind[16];
    if (kit_cmdline_str("hostile", kind, sizeof kind))
        hostile(&vd, kind, buf);
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
    kit_printf("KIT virtio-rng read=%lu requests=%lu kicks=%lu distinct=%d first=%02x%02x%02x%02x%02x%02x%02x%02x\n",
               got, requests, q->kicks, distinct, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7]);
    uint64_t sample = got < 4096 ? got : 4096;
    if (distinct < (sample >= 1024 ? 64 : 2))
        kit_fail("data looks constant (%d distinct byte values)", distinct);
    return 0;
}
