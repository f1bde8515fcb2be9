/*
 * Swiftlet guest kit: a minimal modern (VirtIO 1.x) virtio-pci driver that
 * runs in ring 3 and polls (no interrupts: MSI-X vectors are left at
 * NO_VECTOR and the used ring is polled).
 *
 * Device discovery: vendor 0x1AF4, device 0x1040 + type; the vendor
 * capabilities (common, notify, ISR, device config) are mapped through the
 * BARs set up by pci_setup_bars(). Negotiation: VERSION_1 required; the
 * device-specific features a program asks for; INDIRECT_DESC and EVENT_IDX
 * when offered unless "indirect=0" / "event_idx=0" is on the command line.
 * Split queues live in kit_alloc() RAM.
 */
#ifndef KIT_VIRTIO_H
#define KIT_VIRTIO_H

#include "kit.h"
#include "pci.h"

#define VIRTIO_VENDOR 0x1AF4
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_RNG 4

#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32
#define VIRTIO_F_ACCESS_PLATFORM 33

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4

#define VIRTIO_MAX_QUEUES 4
#define VIRTQ_INDIRECT_MAX 16           /* entries per indirect table */

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

/* One buffer of a request: guest-physical address, length, device-writable. */
struct virtq_buf {
    uint64_t addr;
    uint32_t len;
    bool write;
};

struct virtio_dev;

struct virtq {
    struct virtio_dev *dev;
    uint16_t index, size;
    volatile struct vring_desc *desc;
    volatile uint16_t *avail;           /* flags, idx, ring[size], used_event */
    volatile uint8_t *used;             /* flags, idx, ring[size] {id, len}, avail_event */
    struct vring_desc *indirect;        /* size tables of VIRTQ_INDIRECT_MAX */
    uint16_t *chain_count;              /* per head: descriptors it holds (0: indirect) */
    uint16_t free_head, num_free;
    uint16_t avail_idx;                 /* next avail index (not yet published) */
    uint16_t published;                 /* avail idx at the last kick */
    uint16_t last_used;
    uint64_t notify_addr;
    uint64_t kicks, kicks_suppressed;
};

struct virtio_dev {
    struct pci_dev pci;
    uint16_t type;
    uint64_t common, notify, isr, devcfg;
    uint32_t notify_mult, devcfg_len;
    uint64_t offered, features;
    uint64_t wanted;                    /* device-specific bits the program asked for */
    bool event_idx, indirect;
    int nqueues;
    uint16_t qsize_max;
    struct virtq vq[VIRTIO_MAX_QUEUES];
};

/* Finds the index-th virtio device of this type, sets up its BARs and maps
   its capabilities. Prints why not and returns false on failure. */
bool virtio_find(uint16_t type, int index, struct virtio_dev *vd);
/* Reset, ACKNOWLEDGE, DRIVER, negotiation (VERSION_1 + wanted + ring
   features), FEATURES_OK check, nqueues queues of at most qsize entries
   ("qsize=" on the command line overrides), DRIVER_OK. Can be called again
   after virtio_reset (the queue memory is reused). */
bool virtio_init(struct virtio_dev *vd, uint64_t wanted, int nqueues, uint16_t qsize);
/* Writes 0 to device_status and waits (bounded) until it reads 0. */
bool virtio_reset(struct virtio_dev *vd);
uint8_t virtio_status(struct virtio_dev *vd);
static inline bool virtio_has(const struct virtio_dev *vd, int bit) { return (vd->features >> bit) & 1; }

uint8_t virtio_cfg8(struct virtio_dev *vd, uint32_t off);
uint16_t virtio_cfg16(struct virtio_dev *vd, uint32_t off);
uint32_t virtio_cfg32(struct virtio_dev *vd, uint32_t off);
uint64_t virtio_cfg64(struct virtio_dev *vd, uint32_t off);   /* generation-checked */

/* Adds a request (n buffers, readable ones first) without publishing it.
   Uses an indirect table when INDIRECT_DESC was negotiated, n > 1 and
   n <= VIRTQ_INDIRECT_MAX and use_indirect; else a direct chain. Returns
   the head descriptor id, or -1 if the ring is full. */
int virtq_add(struct virtq *q, const struct virtq_buf *bufs, int n, bool use_indirect);
/* Publishes the added requests (avail idx) and notifies the device unless
   it asked not to be (avail_event with EVENT_IDX, else VRING_USED_F_NO_NOTIFY). */
void virtq_kick(struct virtq *q);
/* Takes one used element (id, len) and frees its descriptors; false if none. */
bool virtq_get(struct virtq *q, uint32_t *id, uint32_t *len);
/* Polls until a used element arrives, DEVICE_NEEDS_RESET is set, or
   timeout_ms passes. Returns 1 (got one), -1 (needs reset), 0 (timeout). */
int virtq_wait(struct virtq *q, uint32_t *id, uint32_t *len, uint64_t timeout_ms);

/* Deliberately broken requests for robustness tests, built from a good
   request's buffers:
     loop      direct chain whose last descriptor points back at the first
               one of the same direction
     oob       first buffer (the request header) at virtq_oob_address():
               no RAM there
     zerolen   first buffer with length 0
     oversize  indirect: a table of queue size + 1 descriptors; without
               indirect: the last readable/first writable buffer made 2 GiB long
     wrongdir  device-writable buffers placed before the readable ones
   Returns the head id (added, not yet kicked) or -1 for an unknown kind. */
int virtq_add_hostile(struct virtq *q, const char *kind, const struct virtq_buf *bufs, int n);
/* "oob_addr=" from the command line, else 16 MiB above the end of RAM
   when that is well below 0xB0000000 (no device there on Swiftlet, microvm,
   pc or q35), else the top page of the CPU's physical address space. */
uint64_t virtq_oob_address(void);

#endif
