/*
 * virtio-vsock: a stream-socket driver in ring 3 against the first virtio
 * device of type 19, talking to the host through swiftlet-vmm's hybrid
 * (Unix-socket) vsock. Three phases, each printing one line:
 *
 *   1. echo: connects to CID 2 port "port=" (default 1234; the host listens
 *      at <uds_path>_1234 and echoes), sends "bytes=" (default 262144) of a
 *      pattern within the host's credit, checks the echo byte for byte, then
 *      SHUTDOWN and waits for the host's RST.
 *        KIT virtio-vsock echo bytes=N sum=XXXXXXXX credit_waits=N updates_sent=N max_inflight=N closed=rst
 *   2. refused: connects to port "refused_port=" (default 9; nothing listens)
 *      and expects RST.
 *        KIT virtio-vsock refused=rst
 *   3. accept: waits ("accept_ms=", default 30000) for a host-initiated
 *      REQUEST to port "listen=" (default 5000), answers RESPONSE, counts and
 *      checksums the bytes until the host's SHUTDOWN, answers
 *      "SUM xxxxxxxx N\n" and closes.
 *        KIT virtio-vsock accepted bytes=N sum=XXXXXXXX closed=rst
 *
 * Benchmark phases (benchmarks/vsock-bench.py is the host side):
 *   t  TX: connects to port 6000 (a host sink) and sends "bench_bytes="
 *      (default 64 MiB) in packets of "tx_len=" (default 65536) as fast as
 *      the credit allows, then SHUTDOWN.
 *   x  RX: connects to port 6001 (a host source), counts until its SHUTDOWN.
 *   p  round trips: connects to port 6002 (a host echo), "pings=" (default
 *      2000) times sends 1 byte and waits for it back.
 *        BENCH vsock tx bytes=N ns=N mbit_s=X
 *        BENCH vsock rx bytes=N ns=N mbit_s=X
 *        BENCH vsock rtt pings=N median_ns=N mean_ns=N min_ns=N
 *
 * Our buf_alloc is "buf_alloc=" (default 16384): smaller than what the host
 * sends, so both sides' credit updates are exercised; a host that sends
 * beyond our credit fails the program. sum is FNV-1a (32-bit). The echo
 * pattern is byte i = (i * 31 + (i >> 8)) & 0xff.
 */
#include "virtio.h"

KIT_PROGRAM("virtio-vsock");

#define VIRTIO_ID_VSOCK 19
#define HOST_CID 2
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUTDOWN_RCV 1
#define SHUTDOWN_SEND 2

struct hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

#define NRX 64
#define NTX 32
#define PAYLOAD 4096
#define BUFSZ (sizeof(struct hdr) + PAYLOAD)

static struct virtio_dev vd;
static struct virtq *rxq, *txq;
static uint8_t *rxbuf[NRX], *txbuf[NTX];
static int rx_slot[1024], tx_slot[1024];
static int tx_free[NTX], ntx_free;
static uint64_t guest_cid;
static uint32_t our_buf_alloc;

struct conn {
    uint32_t local_port, peer_port;
    bool established, reset, peer_shut_send, requested;
    uint32_t peer_buf_alloc, peer_fwd_cnt;
    uint32_t tx_cnt;                    /* bytes we sent */
    uint32_t rx_cnt;                    /* bytes we received (and consumed at once) */
    uint32_t last_fwd_sent;             /* our fwd_cnt (= rx_cnt) in our last packet */
    uint64_t max_inflight, updates_sent;
    /* what arrives: checked against the echo pattern, or summed */
    bool check_pattern;
    uint64_t received;
    uint32_t sum;
};

static uint32_t fnv(uint32_t h, const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static uint8_t pattern_byte(uint64_t i) { return (uint8_t)(i * 31 + (i >> 8)); }

static void post_rx(int slot)
{
    struct virtq_buf b = { (uintptr_t)rxbuf[slot], BUFSZ, true };
    int head = virtq_add(rxq, &b, 1, false);
    if (head < 0)
        kit_fail("RX ring full");
    rx_slot[head] = slot;
}

static void reclaim_tx(void)
{
    uint32_t id;
    while (virtq_get(txq, &id, NULL))
        if (id < 1024)
            tx_free[ntx_free++] = tx_slot[id];
}

static uint64_t ms_cycles(uint64_t ms) { return kit_tsc_rate(NULL) / 1000 * ms; }

static void send_pkt(struct conn *c, uint16_t op, uint32_t flags, const uint8_t *data, uint32_t len)
{
    uint64_t t0 = rdtsc();
    for (;;) {
        reclaim_tx();
        if (ntx_free)
            break;
        if (rdtsc() - t0 > ms_cycles(5000))
            kit_fail("TX ring stuck (device status 0x%x)", virtio_status(&vd));
        cpu_relax();
    }
    int slot = tx_free[--ntx_free];
    struct hdr *h = (struct hdr *)txbuf[slot];
    h->src_cid = guest_cid;
    h->dst_cid = HOST_CID;
    h->src_port = c->local_port;
    h->dst_port = c->peer_port;
    h->len = len;
    h->type = 1;
    h->op = op;
    h->flags = flags;
    h->buf_alloc = our_buf_alloc;
    h->fwd_cnt = c->rx_cnt;
    if (len)
        memcpy(txbuf[slot] + sizeof *h, data, len);
    struct virtq_buf b = { (uintptr_t)txbuf[slot], (uint32_t)(sizeof *h + len), false };
    int head = virtq_add(txq, &b, 1, false);
    if (head < 0)
        kit_fail("TX ring full");
    tx_slot[head] = slot;
    virtq_kick(txq);
    c->last_fwd_sent = c->rx_cnt;
    if (op == OP_RW)
        c->tx_cnt += len;
}

static struct conn *conns[8];
static int nconns;
static uint32_t listen_port;
static struct conn *pending_accept;

static void send_rst_to(uint32_t local, uint32_t peer)
{
    struct conn tmp = { .local_port = local, .peer_port = peer };
    send_pkt(&tmp, OP_RST, 0, NULL, 0);
}

/* Handles every used RX buffer; returns how many. */
static int poll_rx(void)
{
    uint32_t id, len;
    int n = 0;
    while (virtq_get(rxq, &id, &len)) {
        if (id >= 1024)
            kit_fail("device returned RX head %u", id);
        int slot = rx_slot[id];
        struct hdr *h = (struct hdr *)rxbuf[slot];
        n++;
        if (len < sizeof *h || h->len > len - sizeof *h)
            kit_fail("RX packet of %u bytes with len %u", len, len >= sizeof *h ? h->len : 0);
        if (h->src_cid != HOST_CID || h->dst_cid != guest_cid || h->type != 1)
            kit_fail("RX packet with cids %lu->%lu type %u", (uint64_t)h->src_cid, (uint64_t)h->dst_cid, h->type);
        struct conn *c = NULL;
        for (int i = 0; i < nconns; i++)
            if (conns[i] && conns[i]->local_port == h->dst_port && conns[i]->peer_port == h->src_port)
                c = conns[i];
        if (!c && h->op == OP_REQUEST && h->dst_port == listen_port && pending_accept && !pending_accept->requested) {
            c = pending_accept;
            c->peer_port = h->src_port;
            c->requested = true;
        }
        if (!c) {
            if (h->op != OP_RST)
                send_rst_to(h->dst_port, h->src_port);
        } else {
            c->peer_buf_alloc = h->buf_alloc;
            c->peer_fwd_cnt = h->fwd_cnt;
            switch (h->op) {
            case OP_RESPONSE:
                c->established = true;
                break;
            case OP_RST:
                c->reset = true;
                break;
            case OP_SHUTDOWN:
                if (h->flags & SHUTDOWN_SEND)
                    c->peer_shut_send = true;
                break;
            case OP_CREDIT_REQUEST:
                send_pkt(c, OP_CREDIT_UPDATE, 0, NULL, 0);
                c->updates_sent++;
                break;
            case OP_RW: {
                const uint8_t *p = rxbuf[slot] + sizeof *h;
                if (c->check_pattern)
                    for (uint32_t i = 0; i < h->len; i++)
                        if (p[i] != pattern_byte(c->received + i))
                            kit_fail("echo byte %lu is 0x%x, expected 0x%x", c->received + i, p[i], pattern_byte(c->received + i));
                c->sum = fnv(c->sum, p, h->len);
                c->received += h->len;
                c->rx_cnt += h->len;
                /* The host must stay within the credit we last gave it. */
                uint32_t inflight = c->rx_cnt - c->last_fwd_sent;
                if (inflight > c->max_inflight)
                    c->max_inflight = inflight;
                if (inflight > our_buf_alloc)
                    kit_fail("host sent %u bytes beyond our last credit (buf_alloc %u)", inflight, our_buf_alloc);
                /* We consume at once: tell the host when half the buffer is free again. */
                if (c->rx_cnt - c->last_fwd_sent >= our_buf_alloc / 2) {
                    send_pkt(c, OP_CREDIT_UPDATE, 0, NULL, 0);
                    c->updates_sent++;
                }
                break;
            }
            default:
                break;
            }
        }
        post_rx(slot);
    }
    if (n)
        virtq_kick(rxq);
    return n;
}

static bool wait_for(bool *flag, bool *or_flag, uint64_t ms)
{
    uint64_t t0 = rdtsc();
    while (!*flag && !(or_flag && *or_flag)) {
        if (!poll_rx()) {
            if (rdtsc() - t0 > ms_cycles(ms))
                return false;
            if (virtio_status(&vd) & VIRTIO_STATUS_NEEDS_RESET)
                kit_fail("device needs reset");
            cpu_relax();
        }
    }
    return true;
}

static uint32_t credit(struct conn *c)
{
    uint32_t inflight = c->tx_cnt - c->peer_fwd_cnt;
    return inflight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - inflight;
}

static void close_and_wait(struct conn *c, const char *what)
{
    send_pkt(c, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, NULL, 0);
    if (!wait_for(&c->reset, NULL, 5000))
        kit_fail("%s: no RST after our SHUTDOWN", what);
}

static void echo_phase(void)
{
    static struct conn c;
    c.local_port = 1024;
    c.peer_port = (uint32_t)kit_cmdline_u64("port", 1234);
    c.check_pattern = true;
    c.sum = 2166136261u;
    conns[nconns++] = &c;
    uint64_t bytes = kit_cmdline_u64("bytes", 262144);
    send_pkt(&c, OP_REQUEST, 0, NULL, 0);
    if (!wait_for(&c.established, &c.reset, 10000) || c.reset)
        kit_fail("echo: connect to host port %u: %s", c.peer_port, c.reset ? "RST" : "no answer");
    static uint8_t chunk[PAYLOAD];
    uint64_t sent = 0, credit_waits = 0;
    uint64_t t0 = rdtsc(), last_progress = t0;
    while (c.received < bytes) {
        bool progress = poll_rx() > 0;
        if (c.reset)
            kit_fail("echo: RST after %lu bytes sent, %lu received", sent, c.received);
        if (sent < bytes) {
            uint32_t room = credit(&c);
            if (!room) {
                credit_waits++;
            } else {
                uint32_t n = (uint32_t)(bytes - sent < PAYLOAD ? bytes - sent : PAYLOAD);
                if (n > room)
                    n = room;
                for (uint32_t i = 0; i < n; i++)
                    chunk[i] = pattern_byte(sent + i);
                send_pkt(&c, OP_RW, 0, chunk, n);
                sent += n;
                progress = true;
            }
        }
        if (progress)
            last_progress = rdtsc();
        else if (rdtsc() - last_progress > ms_cycles(10000))
            kit_fail("echo: stalled at %lu sent, %lu received (credit %u)", sent, c.received, credit(&c));
    }
    uint64_t ns = kit_tsc_to_ns(rdtsc() - t0);
    close_and_wait(&c, "echo");
    kit_printf("KIT virtio-vsock echo bytes=%lu sum=%08x credit_waits=%lu updates_sent=%lu max_inflight=%lu us=%lu closed=rst\n",
               c.received, c.sum, credit_waits, c.updates_sent, c.max_inflight, ns / 1000);
}

static void refused_phase(void)
{
    static struct conn c;
    c.local_port = 1025;
    c.peer_port = (uint32_t)kit_cmdline_u64("refused_port", 9);
    conns[nconns++] = &c;
    send_pkt(&c, OP_REQUEST, 0, NULL, 0);
    if (!wait_for(&c.reset, &c.established, 5000) || !c.reset)
        kit_fail("refused: port %u %s", c.peer_port, c.established ? "accepted" : "gave no answer");
    kit_printf("KIT virtio-vsock refused=rst\n");
}

static void print_rate(const char *what, uint64_t bytes, uint64_t ns)
{
    uint64_t centi = ns ? bytes * 8 * 100000 / ns : 0;   /* Mbit/s x 100 */
    kit_printf("BENCH vsock %s bytes=%lu ns=%lu mbit_s=%lu.%02lu\n", what, bytes, ns, centi / 100, centi % 100);
}

static void connect_to(struct conn *c, uint32_t local, uint32_t port, const char *what)
{
    c->local_port = local;
    c->peer_port = port;
    c->sum = 2166136261u;
    conns[nconns++] = c;
    send_pkt(c, OP_REQUEST, 0, NULL, 0);
    if (!wait_for(&c->established, &c->reset, 10000) || c->reset)
        kit_fail("%s: connect to host port %u: %s", what, port, c->reset ? "RST" : "no answer");
}

/* TX bench packets: "tx_len=" bytes of payload each (default 65536, the
   largest a packet may carry and what Linux uses for bulk writes), sent from
   NTX preallocated buffers without a copy. */
static void tx_bench(void)
{
    static struct conn c;
    static uint8_t *big[NTX];
    connect_to(&c, 1100, 6000, "tx");
    uint32_t len = (uint32_t)kit_cmdline_u64("tx_len", 65536);
    if (len == 0 || len > 65536)
        kit_fail("tx_len=%u out of range", len);
    for (int i = 0; i < NTX; i++) {
        big[i] = kit_alloc(sizeof(struct hdr) + len, 64);
        for (uint32_t j = 0; j < len; j++)
            big[i][sizeof(struct hdr) + j] = (uint8_t)j;
    }
    uint64_t want = kit_cmdline_u64("bench_bytes", 64u << 20), sent = 0;
    uint64_t t0 = rdtsc(), last = t0;
    while (sent < want) {
        uint32_t room = credit(&c);
        reclaim_tx();
        if (room && ntx_free) {
            uint32_t n = want - sent < len ? (uint32_t)(want - sent) : len;
            if (n > room)
                n = room;
            int slot = tx_free[--ntx_free];
            struct hdr *h = (struct hdr *)big[slot];
            *h = (struct hdr){ .src_cid = guest_cid, .dst_cid = HOST_CID, .src_port = c.local_port, .dst_port = c.peer_port,
                               .len = n, .type = 1, .op = OP_RW, .buf_alloc = our_buf_alloc, .fwd_cnt = c.rx_cnt };
            struct virtq_buf b = { (uintptr_t)big[slot], (uint32_t)(sizeof *h + n), false };
            int head = virtq_add(txq, &b, 1, false);
            if (head < 0)
                kit_fail("TX ring full");
            tx_slot[head] = slot;
            virtq_kick(txq);
            c.tx_cnt += n;
            sent += n;
            last = rdtsc();
        } else if (!poll_rx() && rdtsc() - last > ms_cycles(10000)) {
            kit_fail("tx: stalled at %lu bytes (credit %u)", sent, room);
        }
        if (c.reset)
            kit_fail("tx: RST after %lu bytes", sent);
    }
    /* Done when the host has taken everything (its fwd_cnt). */
    while (c.peer_fwd_cnt != c.tx_cnt && !c.reset) {
        if (!poll_rx()) {
            send_pkt(&c, OP_CREDIT_REQUEST, 0, NULL, 0);
            for (uint64_t t = rdtsc(); rdtsc() - t < ms_cycles(1) && !poll_rx();)
                cpu_relax();
        }
        if (rdtsc() - last > ms_cycles(20000))
            kit_fail("tx: host took %u of %u bytes", c.peer_fwd_cnt, c.tx_cnt);
    }
    uint64_t ns = kit_tsc_to_ns(rdtsc() - t0);
    close_and_wait(&c, "tx");
    print_rate("tx", sent, ns);
}

static void rx_bench(void)
{
    static struct conn c;
    connect_to(&c, 1101, 6001, "rx");
    uint64_t t0 = rdtsc();
    if (!wait_for(&c.peer_shut_send, &c.reset, 60000) || c.reset)
        kit_fail("rx: %s after %lu bytes", c.reset ? "RST" : "no end", c.received);
    uint64_t ns = kit_tsc_to_ns(rdtsc() - t0);
    close_and_wait(&c, "rx");
    print_rate("rx", c.received, ns);
}

static void rtt_bench(void)
{
    static struct conn c;
    static uint64_t samples[4096];
    connect_to(&c, 1102, 6002, "rtt");
    uint64_t pings = kit_cmdline_u64("pings", 2000), total = 0, low = ~0ull;
    if (pings > 4096)
        pings = 4096;
    uint8_t byte = 0x5a;
    for (uint64_t i = 0; i < pings; i++) {
        uint64_t before = c.received, t0 = rdtsc();
        send_pkt(&c, OP_RW, 0, &byte, 1);
        while (c.received == before) {
            if (!poll_rx() && rdtsc() - t0 > ms_cycles(5000))
                kit_fail("rtt: no echo for ping %lu", i);
            if (c.reset)
                kit_fail("rtt: RST");
        }
        uint64_t ns = kit_tsc_to_ns(rdtsc() - t0);
        samples[i] = ns;
        total += ns;
        if (ns < low)
            low = ns;
    }
    /* Median by insertion sort (a few thousand samples). */
    for (uint64_t i = 1; i < pings; i++)
        for (uint64_t j = i; j > 0 && samples[j - 1] > samples[j]; j--) {
            uint64_t t = samples[j];
            samples[j] = samples[j - 1];
            samples[j - 1] = t;
        }
    close_and_wait(&c, "rtt");
    kit_printf("BENCH vsock rtt pings=%lu median_ns=%lu mean_ns=%lu min_ns=%lu\n", pings, samples[pings / 2], total / pings, low);
}

static void put_hex8(uint8_t *p, uint32_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 4)
        p[i] = "0123456789abcdef"[v & 15];
}

static void accept_phase(void)
{
    static struct conn c;
    listen_port = (uint32_t)kit_cmdline_u64("listen", 5000);
    c.local_port = listen_port;
    c.sum = 2166136261u;
    pending_accept = &c;
    conns[nconns++] = &c;
    if (!wait_for(&c.requested, NULL, kit_cmdline_u64("accept_ms", 30000)))
        kit_fail("accept: no connection to port %u", listen_port);
    send_pkt(&c, OP_RESPONSE, 0, NULL, 0);
    if (!wait_for(&c.peer_shut_send, &c.reset, 20000) || c.reset)
        kit_fail("accept: %s after %lu bytes", c.reset ? "RST" : "no SHUTDOWN", c.received);
    /* "SUM xxxxxxxx <count>\n" */
    uint8_t line[40] = "SUM ";
    put_hex8(line + 4, c.sum);
    line[12] = ' ';
    uint32_t n = 13;
    char digits[24];
    int nd = 0;
    uint64_t v = c.received;
    do {
        digits[nd++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (nd)
        line[n++] = (uint8_t)digits[--nd];
    line[n++] = '\n';
    send_pkt(&c, OP_RW, 0, line, n);
    close_and_wait(&c, "accept");
    kit_printf("KIT virtio-vsock accepted bytes=%lu sum=%08x closed=rst\n", c.received, c.sum);
}

int kit_main(void)
{
    if (!virtio_find(VIRTIO_ID_VSOCK, 0, &vd))
        kit_fail("no virtio-vsock device");
    if (!virtio_init(&vd, 0, 3, 256))
        kit_fail("virtio-vsock initialisation failed");
    rxq = &vd.vq[0];
    txq = &vd.vq[1];
    guest_cid = virtio_cfg64(&vd, 0);
    our_buf_alloc = (uint32_t)kit_cmdline_u64("buf_alloc", 16384);
    kit_printf("KIT virtio-vsock guest_cid=%lu queues=%d\n", guest_cid, vd.nqueues);
    for (int i = 0; i < NRX; i++) {
        rxbuf[i] = kit_alloc(BUFSZ, 64);
        post_rx(i);
    }
    virtq_kick(rxq);
    for (int i = 0; i < NTX; i++) {
        txbuf[i] = kit_alloc(BUFSZ, 64);
        tx_free[ntx_free++] = i;
    }
    char phases[16];
    if (!kit_cmdline_str("phases", phases, sizeof phases))
        memcpy(phases, "era", 4);
    for (const char *p = phases; *p; p++) {
        if (*p == 'e')
            echo_phase();
        else if (*p == 'r')
            refused_phase();
        else if (*p == 'a')
            accept_phase();
        else if (*p == 't')
            tx_bench();
        else if (*p == 'x')
            rx_bench();
        else if (*p == 'p')
            rtt_bench();
    }
    return 0;
}
