/*
 * virtio-blk: functional checks of the first modern virtio-blk PCI device
 * (1af4:1042; "disk=N" picks the N-th), selected by command-line keys.
 * Every line starts "KIT virtio-blk"; any failed check ends in FAIL.
 *
 *   (always)           capacity, features, GET_ID (printed)
 *   id=STR             GET_ID must equal STR (20 bytes, NUL-padded)
 *   pattern=1          sectors read_lba.. (read_count, default 0 and 8) and
 *                      the last sector must hold the host's pattern: every
 *                      64-bit little-endian word of sector L equals L
 *   write_lba=N        write write_count (default 8) sectors with the kit
 *                      pattern (every word = L ^ 0x5a5a5a5a5a5a5a5a),
 *                      FLUSH (when offered), read back and compare; the host
 *                      then checks the image
 *   discard_lba=N      DISCARD discard_count (8) sectors if offered
 *   zeroes_lba=N       WRITE_ZEROES zeroes_count (8) sectors if offered, read
 *                      back, must be zero
 *   readonly=1         the device must offer VIRTIO_BLK_F_RO, a write of
 *                      sector 0 must complete with VIRTIO_BLK_S_IOERR, and a
 *                      read of sector 0 must still work (and match the
 *                      pattern with pattern=1)
 *   hostile=KIND       loop|oob|zerolen|oversize|wrongdir: one broken read
 *                      request (see virtio.h); the outcome is needs_reset
 *                      (DEVICE_NEEDS_RESET), error (completed with a non-OK
 *                      status), ok (completed as if valid) or timeout; then
 *                      reset, re-initialise and read sector 0 again.
 *                      expect=needs_reset|error|handled|any (default handled:
 *                      needs_reset or error) says which outcomes pass.
 *   seq_lba=N          write seq_count (default 64) sectors one request at
 *                      a time, each filled with L ^ 0x5e9a5e9a5e9a5e9a, and
 *                      print "KIT virtio-blk seq wrote=I" once write I has
 *                      completed; then read them all back and compare
 *                      ("KIT virtio-blk seq done count=C readback=ok"). The
 *                      snapshot tests pause and restore the VM in the middle.
 *   indirect=0 / event_idx=0 / qsize=N   ring options (virtio.h)
 */
#include "blk_common.h"

KIT_PROGRAM("virtio-blk");

#define KIT_XOR 0x5a5a5a5a5a5a5a5aull

static struct blk b;
static uint8_t *buf;                    /* 64 KiB */
#define BUF_SIZE (64u * 1024)

static bool check_words(const uint8_t *p, uint64_t lba, uint32_t count, uint64_t xor, const char *what)
{
    const uint64_t *w = (const uint64_t *)p;
    for (uint32_t s = 0; s < count; s++)
        for (uint32_t i = 0; i < 64; i++)
            if (w[s * 64 + i] != ((lba + s) ^ xor)) {
                kit_printf("KIT virtio-blk %s mismatch lba=%lu word=%u got=0x%lx want=0x%lx\n", what, lba + s,
                           i, w[s * 64 + i], (lba + s) ^ xor);
                return false;
            }
    return true;
}

static int rw(uint32_t type, uint64_t lba, uint32_t count)
{
    return blk_sync(&b, type, lba, buf, count * 512);
}

static void expect_ok(int st, const char *what)
{
    if (st < 0)
        kit_fail("%s: %s", what, st == -2 ? "DEVICE_NEEDS_RESET" : st == -3 ? "timeout" : "ring full");
    if (st != VIRTIO_BLK_S_OK)
        kit_fail("%s: status %d (%s)", what, st, blk_status_name((uint8_t)st));
}

static uint32_t count_arg(const char *key, uint32_t def)
{
    uint64_t c = kit_cmdline_u64(key, def);
    if (c == 0 || c * 512 > BUF_SIZE)
        kit_fail("%s=%lu out of range (1..%u)", key, c, BUF_SIZE / 512);
    return (uint32_t)c;
}

static void check_range(uint64_t lba, uint32_t count, const char *what)
{
    if (lba >= b.capacity || count > b.capacity - lba)
        kit_fail("%s lba=%lu count=%u beyond capacity %lu", what, lba, count, b.capacity);
}

static void pattern_check(void)
{
    uint64_t lba = kit_cmdline_u64("read_lba", 0);
    uint32_t count = count_arg("read_count", 8);
    check_range(lba, count, "pattern");
    expect_ok(rw(VIRTIO_BLK_T_IN, lba, count), "pattern read");
    if (!check_words(buf, lba, count, 0, "pattern"))
        kit_fail("pattern mismatch");
    uint64_t last = b.capacity - 1;
    expect_ok(rw(VIRTIO_BLK_T_IN, last, 1), "last-sector read");
    if (!check_words(buf, last, 1, 0, "pattern"))
        kit_fail("pattern mismatch in the last sector");
    kit_printf("KIT virtio-blk pattern lba=%lu count=%u last=%lu ok\n", lba, count, last);
}

static void fill(uint64_t lba, uint32_t count, uint64_t xor)
{
    uint64_t *w = (uint64_t *)buf;
    for (uint32_t s = 0; s < count; s++)
        for (uint32_t i = 0; i < 64; i++)
            w[s * 64 + i] = (lba + s) ^ xor;
}

static void write_check(uint64_t lba)
{
    uint32_t count = count_arg("write_count", 8);
    check_range(lba, count, "write");
    fill(lba, count, KIT_XOR);
    expect_ok(rw(VIRTIO_BLK_T_OUT, lba, count), "write");
    const char *flush = "not-offered";
    if (virtio_has(&b.vd, VIRTIO_BLK_F_FLUSH)) {
        expect_ok(blk_sync(&b, VIRTIO_BLK_T_FLUSH, 0, NULL, 0), "flush");
        flush = "ok";
    }
    memset(buf, 0, count * 512);
    expect_ok(rw(VIRTIO_BLK_T_IN, lba, count), "read-back");
    if (!check_words(buf, lba, count, KIT_XOR, "read-back"))
        kit_fail("read-back mismatch");
    kit_printf("KIT virtio-blk write lba=%lu count=%u flush=%s readback=ok\n", lba, count, flush);
}

struct discard_seg {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags;
};

static void discard_check(uint64_t lba)
{
    uint32_t count = (uint32_t)kit_cmdline_u64("discard_count", 8);
    check_range(lba, count, "discard");
    if (!virtio_has(&b.vd, VIRTIO_BLK_F_DISCARD)) {
        kit_printf("KIT virtio-blk discard not-offered\n");
        return;
    }
    struct discard_seg *seg = (struct discard_seg *)buf;
    *seg = (struct discard_seg){ lba, count, 0 };
    expect_ok(blk_sync(&b, VIRTIO_BLK_T_DISCARD, 0, seg, sizeof *seg), "discard");
    kit_printf("KIT virtio-blk discard lba=%lu count=%u ok\n", lba, count);
}

static void zeroes_check(uint64_t lba)
{
    uint32_t count = count_arg("zeroes_count", 8);
    check_range(lba, count, "write-zeroes");
    if (!virtio_has(&b.vd, VIRTIO_BLK_F_WRITE_ZEROES)) {
        kit_printf("KIT virtio-blk write-zeroes not-offered\n");
        return;
    }
    struct discard_seg *seg = (struct discard_seg *)buf;
    *seg = (struct discard_seg){ lba, count, 0 };
    expect_ok(blk_sync(&b, VIRTIO_BLK_T_WRITE_ZEROES, 0, seg, sizeof *seg), "write-zeroes");
    memset(buf, 0xCC, count * 512);
    expect_ok(rw(VIRTIO_BLK_T_IN, lba, count), "read after write-zeroes");
    for (uint32_t i = 0; i < count * 512; i++)
        if (buf[i])
            kit_fail("byte %u after write-zeroes is 0x%x", i, buf[i]);
    kit_printf("KIT virtio-blk write-zeroes lba=%lu count=%u ok\n", lba, count);
}

static void readonly_check(bool pattern)
{
    if (!virtio_has(&b.vd, VIRTIO_BLK_F_RO))
        kit_fail("readonly=1 but the device does not offer VIRTIO_BLK_F_RO");
    fill(0, 1, KIT_XOR);
    int st = rw(VIRTIO_BLK_T_OUT, 0, 1);
    kit_printf("KIT virtio-blk readonly write status=%d (%s)\n", st, st >= 0 ? blk_status_name((uint8_t)st) : "none");
    if (st != VIRTIO_BLK_S_IOERR)
        kit_fail("write to a read-only disk gave status %d, want %d (IOERR)", st, VIRTIO_BLK_S_IOERR);
    expect_ok(rw(VIRTIO_BLK_T_IN, 0, 1), "read of a read-only disk");
    if (pattern && !check_words(buf, 0, 1, 0, "readonly"))
        kit_fail("sector 0 changed on a read-only disk");
    kit_printf("KIT virtio-blk readonly ok\n");
}

static void hostile_check(const char *kind, bool pattern)
{
    struct virtq_buf v[VIRTQ_INDIRECT_MAX];
    struct blk_slot *s = &b.slots[b.q->free_head % BLK_MAX_SLOTS];
    memset(buf, 0xCC, 4096);
    int n = blk_bufs(&b, v, s, VIRTIO_BLK_T_IN, 0, buf, 4096, true);
    int head = virtq_add_hostile(b.q, kind, v, n);
    if (head < 0)
        kit_fail("unknown hostile kind '%s' (loop|oob|zerolen|oversize|wrongdir)", kind);
    virtq_kick(b.q);
    uint32_t id = 0, len = 0;
    int r = virtq_wait(b.q, &id, &len, kit_cmdline_u64("hostile_ms", 3000));
    uint8_t status = virtio_status(&b.vd);
    const char *outcome;
    if (r < 0 || (status & VIRTIO_STATUS_NEEDS_RESET))
        outcome = "needs_reset";
    else if (r == 0)
        outcome = "timeout";
    else
        outcome = b.slots[id % BLK_MAX_SLOTS].status == VIRTIO_BLK_S_OK ? "ok" : "error";
    kit_printf("KIT virtio-blk hostile=%s outcome=%s device_status=0x%x", kind, outcome, status);
    if (r > 0)
        kit_printf(" used_id=%u used_len=%u blk_status=0x%x", id, len, b.slots[id % BLK_MAX_SLOTS].status);
    kit_putc('\n');

    /* Reset and start again: the device must work as before. */
    if (!virtio_reset(&b.vd))
        kit_fail("reset after hostile=%s did not complete", kind);
    if (!blk_open(&b, 128))
        kit_fail("re-initialisation after hostile=%s failed", kind);
    expect_ok(rw(VIRTIO_BLK_T_IN, 0, 8), "read after reset");
    if (pattern && !check_words(buf, 0, 8, 0, "after-reset"))
        kit_fail("data wrong after reset");
    kit_printf("KIT virtio-blk hostile=%s recovered read=ok\n", kind);

    char expect[16] = "handled";
    kit_cmdline_str("expect", expect, sizeof expect);
    bool handled = !strncmp(outcome, "needs_reset", 12) || !strncmp(outcome, "error", 6);
    bool good = !strncmp(expect, "any", 4) ? true
              : !strncmp(expect, "handled", 8) ? handled
              : !strncmp(expect, outcome, 16);
    if (!good)
        kit_fail("hostile=%s outcome=%s, expected %s", kind, outcome, expect);
}

#define SEQ_XOR 0x5e9a5e9a5e9a5e9aull

static void seq_check(uint64_t lba)
{
    uint32_t count = (uint32_t)kit_cmdline_u64("seq_count", 64);
    check_range(lba, count, "seq");
    for (uint32_t i = 0; i < count; i++) {
        fill(lba + i, 1, SEQ_XOR);
        expect_ok(rw(VIRTIO_BLK_T_OUT, lba + i, 1), "seq write");
        kit_printf("KIT virtio-blk seq wrote=%u\n", i);
    }
    for (uint32_t done = 0; done < count;) {
        uint32_t n = count - done < BUF_SIZE / 512 ? count - done : BUF_SIZE / 512;
        memset(buf, 0, n * 512);
        expect_ok(rw(VIRTIO_BLK_T_IN, lba + done, n), "seq read-back");
        if (!check_words(buf, lba + done, n, SEQ_XOR, "seq"))
            kit_fail("seq read-back mismatch");
        done += n;
    }
    kit_printf("KIT virtio-blk seq done count=%u readback=ok\n", count);
}

int kit_main(void)
{
    if (!blk_open(&b, 128))
        kit_fail("no usable virtio-blk device");
    b.use_indirect = kit_cmdline_u64("indirect", 1) != 0;
    buf = kit_alloc(BUF_SIZE, 4096);
    kit_printf("KIT virtio-blk capacity=%lu sectors=%lu bytes ro=%d flush=%d discard=%d write_zeroes=%d size_max=%u seg_max=%u\n",
               b.capacity, b.capacity * 512, virtio_has(&b.vd, VIRTIO_BLK_F_RO),
               virtio_has(&b.vd, VIRTIO_BLK_F_FLUSH), virtio_has(&b.vd, VIRTIO_BLK_F_DISCARD),
               virtio_has(&b.vd, VIRTIO_BLK_F_WRITE_ZEROES), b.size_max, b.seg_max);
    if (!b.capacity)
        kit_fail("capacity 0");

    memset(buf, 0, 32);
    int st = blk_sync(&b, VIRTIO_BLK_T_GET_ID, 0, buf, 20);
    char id[21];
    memcpy(id, buf, 20);
    id[20] = 0;
    kit_printf("KIT virtio-blk get-id status=%d id=\"%s\"\n", st, st == VIRTIO_BLK_S_OK ? id : "");
    char want_id[24];
    if (kit_cmdline_str("id", want_id, sizeof want_id)) {
        expect_ok(st, "get-id");
        if (strlen(want_id) != strlen(id) || memcmp(want_id, id, strlen(id)))
            kit_fail("id \"%s\", expected \"%s\"", id, want_id);
        kit_printf("KIT virtio-blk id ok\n");
    }

    bool pattern = kit_cmdline_u64("pattern", 0) != 0;
    if (pattern)
        pattern_check();
    if (kit_cmdline_u64("readonly", 0))
        readonly_check(pattern);
    uint64_t none = ~0ull;
    uint64_t lba;
    if ((lba = kit_cmdline_u64("write_lba", none)) != none)
        write_check(lba);
    if ((lba = kit_cmdline_u64("discard_lba", none)) != none)
        discard_check(lba);
    if ((lba = kit_cmdline_u64("zeroes_lba", none)) != none)
        zeroes_check(lba);
    if ((lba = kit_cmdline_u64("seq_lba", none)) != none)
        seq_check(lba);
    char kind[16];
    if (kit_cmdline_str("hostile", kind, sizeof kind))
        hostile_check(kind, pattern);
    kit_printf("KIT virtio-blk kicks=%lu suppressed=%lu\n", b.q->kicks, b.q->kicks_suppressed);
    return 0;
}
