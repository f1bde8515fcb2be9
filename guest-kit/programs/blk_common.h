/* Shared by virtio-blk and blk-bench: virtio-blk requests over the kit
   virtio driver. Header, data buffers, status byte: one request per slot. */
#ifndef BLK_COMMON_H
#define BLK_COMMON_H

#include "virtio.h"

#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_F_DISCARD 13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_DISCARD 11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define BLK_STATUS_UNSET 0xEE           /* what we put in the status byte before */

#define BLK_MAX_SLOTS 256

struct blk_req_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

struct blk_slot {
    struct blk_req_hdr hdr;
    uint8_t status;
    uint8_t pad[47];
};

struct blk {
    struct virtio_dev vd;
    struct virtq *q;
    uint64_t capacity;                  /* 512-byte sectors */
    uint32_t size_max, seg_max;
    struct blk_slot *slots;             /* indexed by head descriptor id */
    bool use_indirect;
};

static inline const char *blk_status_name(uint8_t s)
{
    switch (s) {
    case VIRTIO_BLK_S_OK: return "ok";
    case VIRTIO_BLK_S_IOERR: return "ioerr";
    case VIRTIO_BLK_S_UNSUPP: return "unsupp";
    case BLK_STATUS_UNSET: return "unset";
    default: return "other";
    }
}

static inline bool blk_open(struct blk *b, uint16_t qsize)
{
    if (!virtio_find(VIRTIO_ID_BLOCK, (int)kit_cmdline_u64("disk", 0), &b->vd))
        return false;
    uint64_t want = (1ull << VIRTIO_BLK_F_SIZE_MAX) | (1ull << VIRTIO_BLK_F_SEG_MAX) | (1ull << VIRTIO_BLK_F_RO) |
                    (1ull << VIRTIO_BLK_F_BLK_SIZE) | (1ull << VIRTIO_BLK_F_FLUSH) |
                    (1ull << VIRTIO_BLK_F_DISCARD) | (1ull << VIRTIO_BLK_F_WRITE_ZEROES);
    if (!virtio_init(&b->vd, want, 1, qsize))
        return false;
    b->q = &b->vd.vq[0];
    if (b->q->size > BLK_MAX_SLOTS)
        kit_fail("queue size %u above %d", b->q->size, BLK_MAX_SLOTS);
    b->capacity = virtio_cfg64(&b->vd, 0);
    b->size_max = virtio_has(&b->vd, VIRTIO_BLK_F_SIZE_MAX) ? virtio_cfg32(&b->vd, 8) : 0;
    b->seg_max = virtio_has(&b->vd, VIRTIO_BLK_F_SEG_MAX) ? virtio_cfg32(&b->vd, 12) : 0;
    if (!b->slots)
        b->slots = kit_alloc(sizeof(struct blk_slot) * BLK_MAX_SLOTS, 4096);
    b->use_indirect = true;
    return true;
}

/* Builds the buffer list of one request: header, data split at size_max,
   status. Returns the number of buffers (0 if it would not fit). */
static inline int blk_bufs(struct blk *b, struct virtq_buf *v, struct blk_slot *s, uint32_t type,
                           uint64_t sector, void *data, uint32_t len, bool data_write)
{
    int n = 0;
    s->hdr.type = type;
    s->hdr.reserved = 0;
    s->hdr.sector = sector;
    s->status = BLK_STATUS_UNSET;
    v[n++] = (struct virtq_buf){ (uintptr_t)&s->hdr, sizeof s->hdr, false };
    uint32_t seg = b->size_max ? b->size_max : len;
    for (uint32_t off = 0; off < len; off += seg) {
        if (n >= VIRTQ_INDIRECT_MAX - 1)
            return 0;
        uint32_t l = len - off < seg ? len - off : seg;
        v[n++] = (struct virtq_buf){ (uintptr_t)data + off, l, data_write };
    }
    v[n++] = (struct virtq_buf){ (uintptr_t)&s->status, 1, true };
    return n;
}

/* Adds a request (not kicked); returns the head id (its slot) or -1. The
   header and status live in slot[head], so the slot is chosen after the
   head is known: build into a scratch slot, then copy. */
static inline int blk_submit(struct blk *b, uint32_t type, uint64_t sector, void *data, uint32_t len)
{
    struct virtq_buf v[VIRTQ_INDIRECT_MAX];
    /* The head the ring will use next is q->free_head (both the direct
       and the indirect path take it first). */
    if (!b->q->num_free)
        return -1;
    struct blk_slot *s = &b->slots[b->q->free_head % BLK_MAX_SLOTS];
    bool dw = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
    int n = blk_bufs(b, v, s, type, sector, data, len, dw);
    if (!n)
        return -1;
    return virtq_add(b->q, v, n, b->use_indirect);
}

/* One synchronous request; returns the status byte, or -1 (ring full),
   -2 (DEVICE_NEEDS_RESET), -3 (timeout). */
static inline int blk_sync(struct blk *b, uint32_t type, uint64_t sector, void *data, uint32_t len)
{
    int head = blk_submit(b, type, sector, data, len);
    if (head < 0)
        return -1;
    virtq_kick(b->q);
    uint32_t id = 0;
    int r = virtq_wait(b->q, &id, NULL, (uint64_t)kit_cmdline_u64("timeout_ms", 10000));
    if (r < 0)
        return -2;
    if (r == 0)
        return -3;
    return b->slots[id % BLK_MAX_SLOTS].status;
}

#endif
