/* Shared by virtio-net and net-bench: one RX and one TX queue over the kit
   virtio driver, polled. Frames use EtherType 0x88B5 (IEEE 802 local
   experimental) and start with "KITN" and a kind byte. */
#ifndef NET_COMMON_H
#define NET_COMMON_H

#include "virtio.h"

#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_STATUS 16
#define NET_HDR_LEN 12                  /* virtio_net_hdr incl. num_buffers (VERSION_1) */
#define NET_BUF 2048
#define NET_ETHERTYPE 0x88B5
#define NET_MAX_FRAME 1514

struct net {
    struct virtio_dev vd;
    struct virtq *rx, *tx;
    uint8_t mac[6];
    uint8_t *rx_bufs, *tx_bufs;         /* size * NET_BUF each */
    uint16_t *rx_slot_of_head;          /* RX: buffer index by head id */
    uint64_t tx_frames, tx_bytes, rx_frames, rx_bytes;
};

static inline void net_post_rx(struct net *n, uint16_t slot)
{
    struct virtq_buf b = { (uintptr_t)(n->rx_bufs + (size_t)slot * NET_BUF), NET_BUF, true };
    int head = virtq_add(n->rx, &b, 1, false);
    if (head >= 0)
        n->rx_slot_of_head[head] = slot;
}

static inline bool net_open(struct net *n)
{
    if (!virtio_find(VIRTIO_ID_NET, (int)kit_cmdline_u64("nic", 0), &n->vd))
        return false;
    if (!virtio_init(&n->vd, (1ull << VIRTIO_NET_F_MAC) | (1ull << VIRTIO_NET_F_STATUS), 2, 256))
        return false;
    n->rx = &n->vd.vq[0];
    n->tx = &n->vd.vq[1];
    if (virtio_has(&n->vd, VIRTIO_NET_F_MAC)) {
        for (int i = 0; i < 6; i++)
            n->mac[i] = virtio_cfg8(&n->vd, (uint32_t)i);
    } else {
        static const uint8_t def[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
        memcpy(n->mac, def, 6);
    }
    n->rx_bufs = kit_alloc((size_t)n->rx->size * NET_BUF, 4096);
    n->tx_bufs = kit_alloc((size_t)n->tx->size * NET_BUF, 4096);
    n->rx_slot_of_head = kit_alloc(2u * n->rx->size, 64);
    for (uint16_t i = 0; i < n->rx->size; i++)
        net_post_rx(n, i);
    virtq_kick(n->rx);
    kit_printf("KIT %s net mac=%02x:%02x:%02x:%02x:%02x:%02x rxq=%u txq=%u\n", kit_name, n->mac[0], n->mac[1],
               n->mac[2], n->mac[3], n->mac[4], n->mac[5], n->rx->size, n->tx->size);
    return true;
}

/* Frees completed TX descriptors. */
static inline void net_tx_reclaim(struct net *n)
{
    while (virtq_get(n->tx, NULL, NULL))
        ;
}

/* Returns the frame buffer (after the virtio-net header) of the next TX
   slot, or NULL if the ring is full. Fill it, then net_tx_commit. */
static inline uint8_t *net_tx_frame(struct net *n)
{
    if (!n->tx->num_free)
        net_tx_reclaim(n);
    if (!n->tx->num_free)
        return NULL;
    return n->tx_bufs + (size_t)n->tx->free_head * NET_BUF + NET_HDR_LEN;
}

static inline void net_tx_commit(struct net *n, uint32_t frame_len)
{
    uint8_t *p = n->tx_bufs + (size_t)n->tx->free_head * NET_BUF;
    memset(p, 0, NET_HDR_LEN);
    struct virtq_buf b = { (uintptr_t)p, NET_HDR_LEN + frame_len, false };
    if (virtq_add(n->tx, &b, 1, false) >= 0) {
        n->tx_frames++;
        n->tx_bytes += frame_len;
    }
}

/* Next received frame (pointer, length) or false; hand it back with
   net_rx_done (or let net_rx_refill re-post everything taken). */
static inline bool net_rx_get(struct net *n, uint8_t **frame, uint32_t *len, uint16_t *slot)
{
    uint32_t id, l;
    if (!virtq_get(n->rx, &id, &l))
        return false;
    if (id >= n->rx->size)
        kit_fail("device returned RX id %u", id);
    *slot = n->rx_slot_of_head[id];
    *frame = n->rx_bufs + (size_t)*slot * NET_BUF + NET_HDR_LEN;
    *len = l > NET_HDR_LEN ? l - NET_HDR_LEN : 0;
    if (*len > NET_BUF - NET_HDR_LEN)
        kit_fail("device reported an RX length of %u for a %u-byte buffer", l, NET_BUF);
    n->rx_frames++;
    n->rx_bytes += *len;
    return true;
}

static inline void net_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint32_t net_get_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Ethernet header + "KITN" + kind + 32-bit sequence (big-endian); the rest
   of the frame up to len is filled with (seq + i) & 0xff. Returns len. */
static inline uint32_t net_build(uint8_t *f, const uint8_t *dst, const uint8_t *src, char kind, uint32_t seq,
                                 uint32_t len)
{
    if (len < 60)
        len = 60;
    if (len > NET_MAX_FRAME)
        len = NET_MAX_FRAME;
    memcpy(f, dst, 6);
    memcpy(f + 6, src, 6);
    f[12] = NET_ETHERTYPE >> 8;
    f[13] = NET_ETHERTYPE & 0xFF;
    memcpy(f + 14, "KITN", 4);
    f[18] = (uint8_t)kind;
    net_put_u32(f + 19, seq);
    for (uint32_t i = 23; i < len; i++)
        f[i] = (uint8_t)(seq + i);
    return len;
}

/* A kit frame of this kind? */
static inline bool net_is_kit(const uint8_t *f, uint32_t len, char kind)
{
    return len >= 23 && f[12] == (NET_ETHERTYPE >> 8) && f[13] == (NET_ETHERTYPE & 0xFF) &&
           !memcmp(f + 14, "KITN", 4) && (kind == 0 || f[18] == (uint8_t)kind);
}

static const uint8_t net_broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

#endif
