/*
 * Swiftlet guest kit: a minimal modern (VirtIO 1.x) virtio driver that runs
 * in ring 3 and polls (no interrupts: MSI-X vectors are left at NO_VECTOR
 * and the used ring is polled), over virtio-pci or virtio-mmio. Programs
 * see only a device handle (struct virtio_dev) and the functions below; the
 * transport is chosen when the device is found.
 *
 * Device discovery (virtio_find): "virtio=pci" or "virtio=mmio" on the
 * command line forces a transport. Otherwise, devices announced on the
 * command line as "virtio_mmio.device=<size>@<base>:<irq>" (what Swiftlet
 * and Firecracker pass) mean virtio-mmio; with none, PCI (vendor 0x1AF4,
 * device 0x1040 + type; the vendor capabilities are mapped through the BARs
 * set up by pci_setup_bars()); and without PCI configuration access, the
 * pages from 0xD0001000 ("mmio_base=") are probed for the magic value.
 * virtio-mmio devices must be version 2 (a legacy page is skipped).
 *
 * Negotiation: VERSION_1 required; the device-specific features a program
 * asks for; INDIRECT_DESC and EVENT_IDX when offered unless "indirect=0" /
 * "event_idx=0" is on the command line. Split queues live in kit_alloc() RAM.
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

enum virtio_transport { VIRTIO_TRANSPORT_PCI, VIRTIO_TRANSPORT_MMIO };

/* virtio-mmio registers (VirtIO 1.2 section 4.2.2, version 2). */
#define VIRTIO_MMIO_MAGIC 0x74726976u          /* "virt" */
#define VIRTIO_MMIO_MAGIC_VALUE 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100
/* Pages probed when nothing is announced. */
#define VIRTIO_MMIO_PROBE 16

/* One virtio-mmio page: announced on the command line, or found by probing. */
struct virtio_mmio_slot {
    uint64_t base, size;
    uint32_t irq;                       /* the GSI announced (0 when probed) */
    bool announced;
};

struct virtio_dev {
    enum virtio_transport transport;
    struct pci_dev pci;                 /* PCI: the function */
    uint64_t mmio;                      /* MMIO: the register page */
    uint32_t mmio_irq;                  /* MMIO: its interrupt (GSI) */
    uint16_t type;
    uint64_t common, notify, isr;       /* PCI structures */
    uint64_t devcfg;                    /* device configuration (PCI capability, or MMIO page + 0x100) */
    uint32_t notify_mult, devcfg_len;
    uint64_t offered, features;
    uint64_t wanted;                    /* device-specific bits the program asked for */
    bool event_idx, indirect;
    bool kick_always;                   /* kick_always=1: notify on every kick, ignoring suppression */
    int nqueues;
    uint16_t qsize_max;
    struct virtq vq[VIRTIO_MAX_QUEUES];
};

/* Finds the index-th virtio device of this type (see the discovery rules
   above); on PCI sets up its BARs and maps its capabilities. Prints one
   "KIT <name> virtio ..." line naming it, or why not and returns false. */
bool virtio_find(uint16_t type, int index, struct virtio_dev *vd);
/* "pci" or "mmio". */
const char *virtio_transport_name(const struct virtio_dev *vd);
/* The virtio-mmio pages announced on the command line, else those probed
   from 0xD0001000; at most max. Returns how many. */
int virtio_mmio_slots(struct virtio_mmio_slot *slots, int max);
/* Reads and acknowledges the pending interrupt causes (bit 0: used
   buffers, bit 1: configuration change): the ISR on PCI (reading clears
   it), InterruptStatus then InterruptACK on MMIO. */
uint32_t virtio_interrupt_status(struct virtio_dev *vd);
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
