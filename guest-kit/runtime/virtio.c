/* Swiftlet guest kit: minimal modern virtio driver (polling, ring 3) over
   virtio-pci or virtio-mmio. Everything transport-specific is in the
   tr_* functions below; the rest only sees a struct virtio_dev. */
#include "virtio.h"

/* virtio_pci_common_cfg offsets */
#define CC_DFSELECT 0
#define CC_DF 4
#define CC_GFSELECT 8
#define CC_GF 12
#define CC_MSIX 16
#define CC_NUMQ 18
#define CC_STATUS 20
#define CC_GEN 21
#define CC_QSELECT 22
#define CC_QSIZE 24
#define CC_QMSIX 26
#define CC_QENABLE 28
#define CC_QNOFF 30
#define CC_QDESC 32
#define CC_QDRIVER 40
#define CC_QDEVICE 48

#define CAP_COMMON 1
#define CAP_NOTIFY 2
#define CAP_ISR 3
#define CAP_DEVICE 4

#define NO_VECTOR 0xFFFF

static void wr64(uint64_t a, uint64_t v)
{
    mmio_write32(a, (uint32_t)v);
    mmio_write32(a + 4, (uint32_t)(v >> 32));
}

/* ------------------------------------------------------------------ discovery */
static bool pci_find_virtio(uint16_t type, int index, struct virtio_dev *vd)
{
    if (!pci_find(VIRTIO_VENDOR, (uint16_t)(0x1040 + type), index, &vd->pci)) {
        kit_printf("KIT %s virtio no device 1af4:%04x (modern) index %d\n", kit_name, 0x1040 + type, index);
        return false;
    }
    struct pci_dev *d = &vd->pci;
    if (!pci_setup_bars(d))
        return false;
    for (uint8_t cap = pci_find_cap(d, 0x09, 0); cap; cap = pci_find_cap(d, 0x09, cap)) {
        uint8_t cfg_type = pci_read8(d, (uint16_t)(cap + 3));
        uint8_t bar = pci_read8(d, (uint16_t)(cap + 4));
        uint32_t off = pci_read32(d, (uint16_t)(cap + 8));
        uint32_t len = pci_read32(d, (uint16_t)(cap + 12));
        if (bar >= PCI_MAX_BARS || !d->bar[bar] || d->bar_io[bar] || (uint64_t)off + len > d->bar_size[bar])
            continue;
        uint64_t addr = d->bar[bar] + off;
        switch (cfg_type) {
        case CAP_COMMON: if (!vd->common) vd->common = addr; break;
        case CAP_NOTIFY:
            if (!vd->notify) {
                vd->notify = addr;
                vd->notify_mult = pci_read32(d, (uint16_t)(cap + 16));
            }
            break;
        case CAP_ISR: if (!vd->isr) vd->isr = addr; break;
        case CAP_DEVICE:
            if (!vd->devcfg) {
                vd->devcfg = addr;
                vd->devcfg_len = len;
            }
            break;
        default: break;
        }
    }
    kit_printf("KIT %s virtio %02x:%02x.%x type=%u common=0x%lx notify=0x%lx mult=%u isr=0x%lx device=0x%lx\n",
               kit_name, d->bus, d->dev, d->fn, type, vd->common, vd->notify, vd->notify_mult, vd->isr,
               vd->devcfg);
    if (!vd->common || !vd->notify) {
        kit_printf("KIT %s virtio missing common or notify capability\n", kit_name);
        return false;
    }
    return true;
}

/* Parses one "[virtio_mmio.]device=<size>@<base>:<irq>" value (size with
   an optional K/M suffix). */
static bool parse_mmio_device(const char *v, struct virtio_mmio_slot *slot)
{
    uint64_t n[3] = { 0, 0, 0 };
    for (int part = 0; part < 3; part++) {
        int base = 10, digits = 0;
        if (v[0] == '0' && (v[1] == 'x' || v[1] == 'X')) {
            base = 16;
            v += 2;
        }
        for (;; v++, digits++) {
            char c = *v;
            unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                       : base == 16 && c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                       : base == 16 && c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 99;
            if (d == 99)
                break;
            n[part] = n[part] * (unsigned)base + d;
        }
        if (!digits)
            return false;
        if (part == 0) {
            if (*v == 'K' || *v == 'k') { n[0] <<= 10; v++; }
            else if (*v == 'M' || *v == 'm') { n[0] <<= 20; v++; }
        }
        char want = part == 0 ? '@' : part == 1 ? ':' : 0;
        if (want && *v++ != want)
            return false;
    }
    slot->base = n[1];
    slot->size = n[0];
    slot->irq = (uint32_t)n[2];
    return slot->size >= 0x200 && slot->base && slot->base + slot->size <= (1ull << 32);
}

int virtio_mmio_slots(struct virtio_mmio_slot *slots, int max)
{
    static const char key[] = "virtio_mmio.device=";
    int count = 0;
    const char *p = kit_cmdline();
    while (*p && count < max) {
        while (*p == ' ')
            p++;
        if (!strncmp(p, key, sizeof key - 1) && parse_mmio_device(p + sizeof key - 1, &slots[count]))
            slots[count++].announced = true;
        while (*p && *p != ' ')
            p++;
    }
    if (count)
        return count;
    /* Nothing announced: probe the pages where Swiftlet places them
       ("mmio_base=" moves the start), for the magic value. */
    uint64_t base = kit_cmdline_u64("mmio_base", 0xD0001000ull);
    for (int i = 0; i < VIRTIO_MMIO_PROBE && count < max; i++) {
        uint64_t page = base + 0x1000ull * (uint64_t)i;
        if (mmio_read32(page) != VIRTIO_MMIO_MAGIC)
            break;
        slots[count].base = page;
        slots[count].size = 0x1000;
        slots[count].irq = 0;
        slots[count++].announced = false;
    }
    return count;
}

static bool mmio_find_virtio(uint16_t type, int index, const struct virtio_mmio_slot *slots, int count,
                             struct virtio_dev *vd)
{
    for (int i = 0; i < count; i++) {
        uint64_t b = slots[i].base;
        uint32_t magic = mmio_read32(b + VIRTIO_MMIO_MAGIC_VALUE);
        uint32_t version = mmio_read32(b + VIRTIO_MMIO_VERSION);
        uint32_t id = mmio_read32(b + VIRTIO_MMIO_DEVICE_ID);
        if (magic != VIRTIO_MMIO_MAGIC) {
            kit_printf("KIT %s virtio mmio 0x%lx bad magic 0x%x\n", kit_name, b, magic);
            continue;
        }
        if (id != type)
            continue;
        if (version != 2) {
            kit_printf("KIT %s virtio mmio 0x%lx version %u (legacy): skipped\n", kit_name, b, version);
            continue;
        }
        if (index-- > 0)
            continue;
        vd->transport = VIRTIO_TRANSPORT_MMIO;
        vd->mmio = b;
        vd->mmio_irq = slots[i].irq;
        vd->devcfg = b + VIRTIO_MMIO_CONFIG;
        vd->devcfg_len = (uint32_t)(slots[i].size - VIRTIO_MMIO_CONFIG);
        kit_printf("KIT %s virtio mmio 0x%lx irq=%u type=%u vendor=0x%x %s\n", kit_name, b, vd->mmio_irq, type,
                   mmio_read32(b + VIRTIO_MMIO_VENDOR_ID), slots[i].announced ? "announced" : "probed");
        return true;
    }
    kit_printf("KIT %s virtio no mmio device of type %u index %d (%d pages)\n", kit_name, type, index, count);
    return false;
}

bool virtio_find(uint16_t type, int index, struct virtio_dev *vd)
{
    memset(vd, 0, sizeof *vd);
    vd->type = type;
    char force[8] = "";
    kit_cmdline_str("virtio", force, sizeof force);     /* virtio=pci | virtio=mmio */
    struct virtio_mmio_slot slots[VIRTIO_MMIO_PROBE];
    if (!strncmp(force, "pci", 4))
        return pci_find_virtio(type, index, vd);
    /* Devices announced on the command line mean virtio-mmio (and often
       no PCI at all): look nowhere else. */
    int announced = 0;
    if (strncmp(force, "mmio", 5)) {
        const char *p = kit_cmdline();
        for (; *p; p++)
            if (!strncmp(p, "virtio_mmio.device=", 19))
                announced++;
    }
    if (!strncmp(force, "mmio", 5) || announced || !pci_init()) {
        int count = virtio_mmio_slots(slots, VIRTIO_MMIO_PROBE);
        return mmio_find_virtio(type, index, slots, count, vd);
    }
    return pci_find_virtio(type, index, vd);
}

const char *virtio_transport_name(const struct virtio_dev *vd)
{
    return vd->transport == VIRTIO_TRANSPORT_MMIO ? "mmio" : "pci";
}

/* ------------------------------------------------------------------ transport operations */
static uint8_t tr_status(struct virtio_dev *vd)
{
    if (vd->transport == VIRTIO_TRANSPORT_MMIO)
        return (uint8_t)mmio_read32(vd->mmio + VIRTIO_MMIO_STATUS);
    return mmio_read8(vd->common + CC_STATUS);
}

static void tr_set_status(struct virtio_dev *vd, uint8_t v)
{
    if (vd->transport == VIRTIO_TRANSPORT_MMIO)
        mmio_write32(vd->mmio + VIRTIO_MMIO_STATUS, v);
    else
        mmio_write8(vd->common + CC_STATUS, v);
}

static uint32_t tr_generation(struct virtio_dev *vd)
{
    if (vd->transport == VIRTIO_TRANSPORT_MMIO)
        return mmio_read32(vd->mmio + VIRTIO_MMIO_CONFIG_GENERATION);
    return mmio_read8(vd->common + CC_GEN);
}

static uint64_t tr_device_features(struct virtio_dev *vd)
{
    uint64_t sel, reg;
    if (vd->transport == VIRTIO_TRANSPORT_MMIO) {
        sel = vd->mmio + VIRTIO_MMIO_DEVICE_FEATURES_SEL;
        reg = vd->mmio + VIRTIO_MMIO_DEVICE_FEATURES;
    } else {
        sel = vd->common + CC_DFSELECT;
        reg = vd->common + CC_DF;
    }
    mmio_write32(sel, 0);
    uint64_t f = mmio_read32(reg);
    mmio_write32(sel, 1);
    return f | (uint64_t)mmio_read32(reg) << 32;
}

static void tr_driver_features(struct virtio_dev *vd, uint64_t f)
{
    uint64_t sel, reg;
    if (vd->transport == VIRTIO_TRANSPORT_MMIO) {
        sel = vd->mmio + VIRTIO_MMIO_DRIVER_FEATURES_SEL;
        reg = vd->mmio + VIRTIO_MMIO_DRIVER_FEATURES;
    } else {
        sel = vd->common + CC_GFSELECT;
        reg = vd->common + CC_GF;
    }
    mmio_write32(sel, 0);
    mmio_write32(reg, (uint32_t)f);
    mmio_write32(sel, 1);
    mmio_write32(reg, (uint32_t)(f >> 32));
}

/* Selects queue i and returns its maximum size (0: the device has no such queue). */
static uint16_t tr_queue_max(struct virtio_dev *vd, int i)
{
    if (vd->transport == VIRTIO_TRANSPORT_MMIO) {
        mmio_write32(vd->mmio + VIRTIO_MMIO_QUEUE_SEL, (uint32_t)i);
        uint32_t max = mmio_read32(vd->mmio + VIRTIO_MMIO_QUEUE_NUM_MAX);
        if (max && mmio_read32(vd->mmio + VIRTIO_MMIO_QUEUE_READY)) {
            kit_printf("KIT %s virtio queue %d is already in use\n", kit_name, i);
            return 0;
        }
        return max > 0xFFFF ? 0x8000 : (uint16_t)max;
    }
    if (i >= mmio_read16(vd->common + CC_NUMQ))
        return 0;
    mmio_write16(vd->common + CC_QSELECT, (uint16_t)i);
    return mmio_read16(vd->common + CC_QSIZE);
}

/* Gives the selected queue its size and rings and enables it. */
static void tr_queue_enable(struct virtio_dev *vd, struct virtq *q)
{
    if (vd->transport == VIRTIO_TRANSPORT_MMIO) {
        uint64_t b = vd->mmio;
        mmio_write32(b + VIRTIO_MMIO_QUEUE_NUM, q->size);
        wr64(b + VIRTIO_MMIO_QUEUE_DESC_LOW, (uintptr_t)q->desc);
        wr64(b + VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uintptr_t)q->avail);
        wr64(b + VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uintptr_t)q->used);
        q->notify_addr = b + VIRTIO_MMIO_QUEUE_NOTIFY;
        mmio_write32(b + VIRTIO_MMIO_QUEUE_READY, 1);
        return;
    }
    uint64_t c = vd->common;
    mmio_write16(c + CC_QSIZE, q->size);
    mmio_write16(c + CC_QMSIX, NO_VECTOR);
    wr64(c + CC_QDESC, (uintptr_t)q->desc);
    wr64(c + CC_QDRIVER, (uintptr_t)q->avail);
    wr64(c + CC_QDEVICE, (uintptr_t)q->used);
    uint16_t noff = mmio_read16(c + CC_QNOFF);
    q->notify_addr = vd->notify + (uint64_t)noff * vd->notify_mult;
    mmio_write16(c + CC_QENABLE, 1);
}

static void tr_notify(struct virtq *q)
{
    if (q->dev->transport == VIRTIO_TRANSPORT_MMIO)
        mmio_write32(q->notify_addr, q->index);         /* QueueNotify: the queue index */
    else
        mmio_write16(q->notify_addr, q->index);
}

uint32_t virtio_interrupt_status(struct virtio_dev *vd)
{
    if (vd->transport == VIRTIO_TRANSPORT_MMIO) {
        uint32_t s = mmio_read32(vd->mmio + VIRTIO_MMIO_INTERRUPT_STATUS);
        if (s)
            mmio_write32(vd->mmio + VIRTIO_MMIO_INTERRUPT_ACK, s);
        return s;
    }
    return vd->isr ? mmio_read8(vd->isr) : 0;           /* reading the ISR clears it */
}

/* ------------------------------------------------------------------ device set-up */
uint8_t virtio_status(struct virtio_dev *vd)
{
    return tr_status(vd);
}

bool virtio_reset(struct virtio_dev *vd)
{
    tr_set_status(vd, 0);
    for (int i = 0; i < 100000; i++)
        if (tr_status(vd) == 0)
            return true;
    return false;
}

uint8_t virtio_cfg8(struct virtio_dev *vd, uint32_t off) { return mmio_read8(vd->devcfg + off); }
uint16_t virtio_cfg16(struct virtio_dev *vd, uint32_t off) { return mmio_read16(vd->devcfg + off); }
uint32_t virtio_cfg32(struct virtio_dev *vd, uint32_t off) { return mmio_read32(vd->devcfg + off); }

uint64_t virtio_cfg64(struct virtio_dev *vd, uint32_t off)
{
    for (int i = 0; i < 100; i++) {
        uint32_t g = tr_generation(vd);
        uint64_t v = mmio_read32(vd->devcfg + off) | ((uint64_t)mmio_read32(vd->devcfg + off + 4) << 32);
        if (tr_generation(vd) == g)
            return v;
    }
    return 0;
}

static void set_status(struct virtio_dev *vd, uint8_t bits)
{
    tr_set_status(vd, (uint8_t)(virtio_status(vd) | bits));
}

static void queue_memory(struct virtq *q)
{
    uint16_t n = q->size;
    if (!q->desc) {
        q->desc = kit_alloc(16u * n, 4096);
        q->avail = kit_alloc(6u + 2u * n, 4096);
        q->used = kit_alloc(6u + 8u * n, 4096);
        q->indirect = kit_alloc(sizeof(struct vring_desc) * VIRTQ_INDIRECT_MAX * n, 4096);
        q->chain_count = kit_alloc(2u * n, 64);
    } else {
        memset((void *)q->desc, 0, 16u * n);
        memset((void *)q->avail, 0, 6u + 2u * n);
        memset((void *)q->used, 0, 6u + 8u * n);
    }
    for (uint16_t i = 0; i < n; i++)
        q->desc[i].next = (uint16_t)(i + 1);
    q->free_head = 0;
    q->num_free = n;
    q->avail_idx = q->published = q->last_used = 0;
    q->kicks = q->kicks_suppressed = 0;
}

bool virtio_init(struct virtio_dev *vd, uint64_t wanted, int nqueues, uint16_t qsize)
{
    if (nqueues > VIRTIO_MAX_QUEUES)
        nqueues = VIRTIO_MAX_QUEUES;
    vd->wanted = wanted;
    if (!virtio_reset(vd)) {
        kit_printf("KIT %s virtio reset did not complete\n", kit_name);
        return false;
    }
    set_status(vd, VIRTIO_STATUS_ACKNOWLEDGE);
    set_status(vd, VIRTIO_STATUS_DRIVER);
    vd->kick_always = kit_cmdline_u64("kick_always", 0) != 0;
    uint64_t offered = tr_device_features(vd);
    vd->offered = offered;
    if (!((offered >> VIRTIO_F_VERSION_1) & 1)) {
        kit_printf("KIT %s virtio device does not offer VERSION_1 (offered=0x%lx)\n", kit_name, offered);
        set_status(vd, VIRTIO_STATUS_FAILED);
        return false;
    }
    uint64_t want = wanted | (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_F_ACCESS_PLATFORM);
    if (kit_cmdline_u64("event_idx", 1))
        want |= 1ull << VIRTIO_F_EVENT_IDX;
    if (kit_cmdline_u64("indirect", 1))
        want |= 1ull << VIRTIO_F_INDIRECT_DESC;
    uint64_t f = offered & want;
    tr_driver_features(vd, f);
    set_status(vd, VIRTIO_STATUS_FEATURES_OK);
    if (!(virtio_status(vd) & VIRTIO_STATUS_FEATURES_OK)) {
        kit_printf("KIT %s virtio FEATURES_OK not accepted (features=0x%lx)\n", kit_name, f);
        set_status(vd, VIRTIO_STATUS_FAILED);
        return false;
    }
    vd->features = f;
    vd->event_idx = (f >> VIRTIO_F_EVENT_IDX) & 1;
    vd->indirect = (f >> VIRTIO_F_INDIRECT_DESC) & 1;
    if (vd->transport == VIRTIO_TRANSPORT_PCI)
        mmio_write16(vd->common + CC_MSIX, NO_VECTOR);
    uint16_t want_size = (uint16_t)kit_cmdline_u64("qsize", qsize);
    vd->nqueues = nqueues;
    for (int i = 0; i < nqueues; i++) {
        struct virtq *q = &vd->vq[i];
        uint16_t max = tr_queue_max(vd, i);
        if (!max) {
            kit_printf("KIT %s virtio queue %d not available (the device needs %d)\n", kit_name, i, nqueues);
            return false;
        }
        uint16_t size = max < want_size ? max : want_size;
        while (size & (size - 1))               /* split queues: power of two */
            size &= (uint16_t)(size - 1);
        if (q->desc && q->size != size) {
            kit_printf("KIT %s virtio queue %d size changed\n", kit_name, i);
            return false;
        }
        q->dev = vd;
        q->index = (uint16_t)i;
        q->size = size;
        queue_memory(q);
        if (!vd->event_idx)
            q->avail[0] = 1;                    /* VRING_AVAIL_F_NO_INTERRUPT: we poll */
        else
            q->avail[2 + size] = 0x8000;         /* used_event far ahead */
        tr_queue_enable(vd, q);
    }
    set_status(vd, VIRTIO_STATUS_DRIVER_OK);
    uint8_t st = virtio_status(vd);
    kit_printf("KIT %s virtio ready transport=%s offered=0x%lx features=0x%lx event_idx=%d indirect=%d queues=%d qsize=%u status=0x%x\n",
               kit_name, virtio_transport_name(vd), offered, f, vd->event_idx, vd->indirect, nqueues, vd->vq[0].size, st);
    return !(st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED));
}

/* ------------------------------------------------------------------ rings */
static inline volatile uint16_t *used_idx(struct virtq *q) { return (volatile uint16_t *)(q->used + 2); }
static inline volatile uint16_t *used_flags(struct virtq *q) { return (volatile uint16_t *)q->used; }
static inline volatile uint16_t *avail_event(struct virtq *q) { return (volatile uint16_t *)(q->used + 4 + 8u * q->size); }

static int alloc_desc(struct virtq *q)
{
    if (!q->num_free)
        return -1;
    uint16_t i = q->free_head;
    q->free_head = q->desc[i].next;
    q->num_free--;
    return i;
}

static void publish(struct virtq *q, uint16_t head)
{
    q->avail[2 + (q->avail_idx & (q->size - 1))] = head;
    q->avail_idx++;
}

int virtq_add(struct virtq *q, const struct virtq_buf *bufs, int n, bool use_indirect)
{
    if (n <= 0)
        return -1;
    if (q->dev->indirect && use_indirect && n > 1 && n <= VIRTQ_INDIRECT_MAX) {
        int head = alloc_desc(q);
        if (head < 0)
            return -1;
        struct vring_desc *t = q->indirect + (size_t)head * VIRTQ_INDIRECT_MAX;
        for (int i = 0; i < n; i++) {
            t[i].addr = bufs[i].addr;
            t[i].len = bufs[i].len;
            t[i].flags = (uint16_t)((bufs[i].write ? VRING_DESC_F_WRITE : 0) | (i + 1 < n ? VRING_DESC_F_NEXT : 0));
            t[i].next = (uint16_t)(i + 1);
        }
        q->desc[head].addr = (uintptr_t)t;
        q->desc[head].len = (uint32_t)(n * sizeof(struct vring_desc));
        q->desc[head].flags = VRING_DESC_F_INDIRECT;
        q->chain_count[head] = 1;
        publish(q, (uint16_t)head);
        return head;
    }
    if (n > q->num_free)
        return -1;
    int head = q->free_head, prev = -1;
    for (int i = 0; i < n; i++) {
        int d = alloc_desc(q);
        q->desc[d].addr = bufs[i].addr;
        q->desc[d].len = bufs[i].len;
        q->desc[d].flags = bufs[i].write ? VRING_DESC_F_WRITE : 0;
        if (prev >= 0) {
            q->desc[prev].flags |= VRING_DESC_F_NEXT;
            q->desc[prev].next = (uint16_t)d;
        }
        prev = d;
    }
    q->chain_count[head] = (uint16_t)n;
    publish(q, (uint16_t)head);
    return head;
}

void virtq_kick(struct virtq *q)
{
    uint16_t old = q->published, now = q->avail_idx;
    if (old == now)
        return;
    barrier();                                  /* ring entries before idx (x86: stores are ordered) */
    q->avail[1] = now;
    q->published = now;
    kit_mb();                                   /* idx store before reading avail_event / flags */
    bool need;
    if (q->dev->event_idx) {
        uint16_t ev = *avail_event(q);
        need = (uint16_t)(now - ev - 1) < (uint16_t)(now - old);
    } else {
        need = !(*used_flags(q) & 1);           /* VRING_USED_F_NO_NOTIFY */
    }
    if (need || q->dev->kick_always) {
        tr_notify(q);
        q->kicks++;
    } else {
        q->kicks_suppressed++;
    }
}

bool virtq_get(struct virtq *q, uint32_t *id, uint32_t *len)
{
    if (q->last_used == *used_idx(q))
        return false;
    barrier();
    volatile uint32_t *e = (volatile uint32_t *)(q->used + 4 + 8u * (q->last_used & (q->size - 1)));
    uint32_t head = e[0], l = e[1];
    q->last_used++;
    if (q->dev->event_idx)
        q->avail[2 + q->size] = (uint16_t)(q->last_used + 0x8000);
    if (id)
        *id = head;
    if (len)
        *len = l;
    if (head >= q->size)
        return true;                            /* a broken device: nothing to free */
    /* Free the chain: its recorded length, bounded by the queue size. */
    uint16_t count = q->chain_count[head], d = (uint16_t)head;
    if (!count || count > q->size)
        count = 1;
    for (uint16_t i = 0; i < count; i++) {
        uint16_t next = q->desc[d].next;
        bool more = q->desc[d].flags & VRING_DESC_F_NEXT;
        q->desc[d].next = q->free_head;
        q->free_head = d;
        q->num_free++;
        if (!more || next >= q->size)
            break;
        d = next;
    }
    q->chain_count[head] = 0;
    return true;
}

int virtq_wait(struct virtq *q, uint32_t *id, uint32_t *len, uint64_t timeout_ms)
{
    uint64_t hz = kit_tsc_rate(NULL);
    uint64_t t0 = rdtsc(), limit = hz / 1000 * timeout_ms;
    for (uint64_t n = 0;; n++) {
        if (virtq_get(q, id, len))
            return 1;
        /* The status read is an exit: look at it only now and then. */
        if ((n & 1023) == 1023 && (virtio_status(q->dev) & VIRTIO_STATUS_NEEDS_RESET))
            return -1;
        if (rdtsc() - t0 > limit)
            return (virtio_status(q->dev) & VIRTIO_STATUS_NEEDS_RESET) ? -1 : 0;
        cpu_relax();
    }
}

/* ------------------------------------------------------------------ hostile chains */
uint64_t virtq_oob_address(void)
{
    uint64_t a = kit_cmdline_u64("oob_addr", 0);
    if (a)
        return a;
    /* 16 MiB above the end of RAM when that is well below the 32-bit
       device area (0xB0000000: q35's ECAM, Swiftlet's and microvm's PCI
       window at 0xC0000000); else the last page of the guest-physical
       address space (an address above it would be truncated to the CPU's
       physical address width). */
    uint64_t top = (kit_ram_top() + 0xFFFFF) & ~0xFFFFFull;
    if (top + (32ull << 20) <= 0xB0000000ull)
        return top + (16ull << 20);
    uint32_t r[4];
    cpuid(0x80000008, 0, r);
    unsigned bits = r[0] & 0xFF;
    if (bits < 36 || bits > 52)
        bits = 36;
    return (1ull << bits) - 4096;
}

static int add_direct_raw(struct virtq *q, const struct vring_desc *src, int n, int loop_to_head)
{
    if (n > q->num_free)
        return -1;
    int head = q->free_head, prev = -1;
    for (int i = 0; i < n; i++) {
        int d = alloc_desc(q);
        q->desc[d].addr = src[i].addr;
        q->desc[d].len = src[i].len;
        q->desc[d].flags = src[i].flags & ~VRING_DESC_F_NEXT;
        if (prev >= 0) {
            q->desc[prev].flags |= VRING_DESC_F_NEXT;
            q->desc[prev].next = (uint16_t)d;
        }
        prev = d;
    }
    if (loop_to_head) {
        /* Back to the first descriptor of the same direction as the last
           one, so that a device sees the loop before any ordering error. */
        int target = head;
        uint16_t dir = q->desc[prev].flags & VRING_DESC_F_WRITE;
        for (int d = head, i = 0; i < n; i++, d = q->desc[d].next)
            if ((q->desc[d].flags & VRING_DESC_F_WRITE) == dir) {
                target = d;
                break;
            }
        q->desc[prev].flags |= VRING_DESC_F_NEXT;
        q->desc[prev].next = (uint16_t)target;
    }
    q->chain_count[head] = (uint16_t)n;
    publish(q, (uint16_t)head);
    return head;
}

int virtq_add_hostile(struct virtq *q, const char *kind, const struct virtq_buf *bufs, int n)
{
    struct vring_desc d[VIRTQ_INDIRECT_MAX];
    if (n < 1 || n > VIRTQ_INDIRECT_MAX)
        return -1;
    for (int i = 0; i < n; i++) {
        d[i].addr = bufs[i].addr;
        d[i].len = bufs[i].len;
        d[i].flags = bufs[i].write ? VRING_DESC_F_WRITE : 0;
        d[i].next = 0;
    }
    if (!strncmp(kind, "loop", 5))
        return add_direct_raw(q, d, n, 1);
    if (!strncmp(kind, "oob", 4)) {
        d[0].addr = virtq_oob_address();
        return add_direct_raw(q, d, n, 0);
    }
    if (!strncmp(kind, "zerolen", 8)) {
        d[0].len = 0;
        return add_direct_raw(q, d, n, 0);
    }
    if (!strncmp(kind, "wrongdir", 9)) {
        struct vring_desc r[VIRTQ_INDIRECT_MAX];
        int k = 0;
        for (int i = 0; i < n; i++)
            if (d[i].flags & VRING_DESC_F_WRITE)
                r[k++] = d[i];
        for (int i = 0; i < n; i++)
            if (!(d[i].flags & VRING_DESC_F_WRITE))
                r[k++] = d[i];
        return add_direct_raw(q, r, n, 0);
    }
    if (!strncmp(kind, "oversize", 9)) {
        if (q->dev->indirect) {
            /* An indirect table longer than the queue: the first buffer,
               then the middle ones repeated, then the last. */
            uint32_t entries = (uint32_t)q->size + 1;
            struct vring_desc *t = kit_alloc(sizeof *t * entries, 4096);
            for (uint32_t i = 0; i < entries; i++) {
                int src = i == 0 ? 0 : i + 1 == entries ? n - 1 : (n > 2 ? 1 + (int)(i % (uint32_t)(n - 2)) : 0);
                t[i] = d[src];
                t[i].flags = (uint16_t)(d[src].flags | (i + 1 < entries ? VRING_DESC_F_NEXT : 0));
                t[i].next = (uint16_t)(i + 1);
            }
            int head = alloc_desc(q);
            if (head < 0)
                return -1;
            q->desc[head].addr = (uintptr_t)t;
            q->desc[head].len = entries * (uint32_t)sizeof *t;
            q->desc[head].flags = VRING_DESC_F_INDIRECT;
            q->chain_count[head] = 1;
            publish(q, (uint16_t)head);
            return head;
        }
        int k = n > 1 ? n - 2 : 0;
        d[k].len = 0x80000000u;                 /* 2 GiB: beyond the guest's RAM */
        return add_direct_raw(q, d, n, 0);
    }
    return -1;
}
