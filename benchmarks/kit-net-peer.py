#!/usr/bin/env python3
"""Host side of the guest kit's virtio-net and net-bench programs.

Runs inside the network namespace that holds the VMM's tap (start it with
`ip netns exec NS`, before the VMM), and talks to the guest through an
AF_PACKET socket bound to the tap with EtherType 0x88B5. Frames carry
"KITN", a kind byte and a 32-bit big-endian sequence number after the
Ethernet header (guest-kit/programs/net_common.h).

  kit-net-peer.py echo  --iface kt0 --guest-frames 4 --pings 8
      waits for 4 'G' frames from the guest (virtio-net send=4), then sends
      8 'P' frames to the guest's MAC and waits for 8 'Q' replies
      (virtio-net echo=8). Prints one JSON line; exit 0 when all arrived.
  kit-net-peer.py bench --iface kt0 --rx-seconds 3 --rx-len 1514
      the net-bench protocol: answers the guest's 'H' hello with 'A',
      counts 'T' frames until the guest's 'E', then sends 'R' frames for
      --rx-seconds and 'F' (finish) frames. Prints one JSON line.

Python 3.11 standard library only (bench sends with sendmmsg through ctypes). Never sends anything but 0x88B5 frames
on the given interface.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import select
import socket
import struct
import sys
import time

ETHERTYPE = 0x88B5
MAGIC = b"KITN"


def frame(dst: bytes, src: bytes, kind: bytes, seq: int, length: int) -> bytes:
    length = max(60, min(1514, length))
    head = dst + src + struct.pack("!H", ETHERTYPE) + MAGIC + kind + struct.pack("!I", seq & 0xFFFFFFFF)
    body = bytes((seq + i) & 0xFF for i in range(len(head), length))
    return head + body


def parse(data: bytes):
    """(src_mac, kind, seq) of a kit frame, or None."""
    if len(data) < 23 or data[12:14] != struct.pack("!H", ETHERTYPE) or data[14:18] != MAGIC:
        return None
    return data[6:12], data[18:19], struct.unpack("!I", data[19:23])[0]


class Port:
    def __init__(self, iface: str):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.sock.bind((iface, ETHERTYPE))
        self.mac = self.sock.getsockname()[4][:6]
        self.sock.setblocking(False)

    def recv(self, timeout: float):
        """(frame bytes, pkttype) or None after timeout seconds."""
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return None
        data, addr = self.sock.recvfrom(65536)
        return data, addr[2]

    def send(self, data: bytes) -> bool:
        try:
            self.sock.send(data)
            return True
        except (BlockingIOError, OSError):
            return False


BATCH = 64


class Batch:
    """BATCH frames handed to the kernel by one sendmmsg(2) (through ctypes:
    the socket module has no sendmmsg), so the peer spends a syscall per 64
    frames rather than per frame and the VMM, not the peer, bounds RX. Each
    frame's sequence number is rewritten in place before each call."""

    class IOVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]

    class MsgHdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                    ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]

    class MMsgHdr(ctypes.Structure):
        pass

    MMsgHdr._fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]

    def __init__(self, sock: socket.socket, frames: list[bytes]):
        self.fd = sock.fileno()
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.buffers = [ctypes.create_string_buffer(f, len(f)) for f in frames]
        self.sizes = [len(f) for f in frames]
        self.iovecs = (self.IOVec * len(frames))()
        self.messages = (self.MMsgHdr * len(frames))()
        for i, buffer in enumerate(self.buffers):
            self.iovecs[i].base = ctypes.addressof(buffer)
            self.iovecs[i].length = self.sizes[i]
            self.messages[i].hdr.iov = ctypes.addressof(self.iovecs[i])
            self.messages[i].hdr.iovlen = 1

    def send(self, first_seq: int) -> int:
        """Frames sent (0 when the socket would block)."""
        for i, buffer in enumerate(self.buffers):
            struct.pack_into("!I", buffer, 19, (first_seq + i) & 0xFFFFFFFF)
        count = self.libc.sendmmsg(self.fd, self.messages, len(self.buffers), 0)
        return max(count, 0)

    def lengths(self, count: int) -> int:
        return sum(self.sizes[:count])


def incoming(port: Port, deadline: float):
    """Yields (src, kind, seq, length) of kit frames sent by the guest."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        got = port.recv(min(left, 0.2))
        if got is None:
            yield None
            continue
        data, pkttype = got
        if pkttype == socket.PACKET_OUTGOING:
            continue
        p = parse(data)
        if p:
            yield p[0], p[1], p[2], len(data)


def echo(args) -> int:
    port = Port(args.iface)
    deadline = time.monotonic() + args.timeout
    guest = None
    seen = set()
    for item in incoming(port, deadline):
        if item and item[1] == b"G":
            guest = item[0]
            seen.add(item[2])
            if len(seen) >= args.guest_frames:
                break
    replies = set()
    if guest is not None and args.pings:
        for seq in range(args.pings):
            port.send(frame(guest, port.mac, b"P", seq, args.len))
        for item in incoming(port, deadline):
            if item and item[1] == b"Q" and item[0] == guest:
                replies.add(item[2])
                if len(replies) >= args.pings:
                    break
    ok = len(seen) >= args.guest_frames and len(replies) >= args.pings
    print(json.dumps({"mode": "echo", "guest_mac": guest.hex(":") if guest else None,
                      "guest_frames": len(seen), "replies": len(replies), "ok": ok}), flush=True)
    return 0 if ok else 1


def bench(args) -> int:
    port = Port(args.iface)
    deadline = time.monotonic() + args.timeout
    out = {"mode": "bench", "ok": False}
    guest = None
    for item in incoming(port, deadline):
        if item and item[1] == b"H":
            guest = item[0]
            break
    if guest is None:
        out["error"] = "no hello from the guest"
        print(json.dumps(out), flush=True)
        return 1
    out["guest_mac"] = guest.hex(":")
    for _ in range(3):
        port.send(frame(guest, port.mac, b"A", 0, 60))
    # TX phase (guest -> host)
    frames = nbytes = 0
    first = last = None
    end_seq = None
    for item in incoming(port, deadline):
        if item is None:
            continue
        src, kind, seq, length = item
        if src != guest:
            continue
        if kind == b"T":
            now = time.monotonic()
            first = first or now
            last = now
            frames += 1
            nbytes += length
        elif kind == b"E":
            end_seq = seq
            break
    secs = (last - first) if first and last and last > first else 0.0
    out["host_rx"] = {"frames": frames, "bytes": nbytes, "seconds": round(secs, 6),
                      "guest_sent": end_seq,
                      "mbps": round(nbytes * 8 / secs / 1e6, 3) if secs else None}
    # RX phase (host -> guest)
    time.sleep(0.2)
    sent = sent_bytes = dropped = 0
    batch = Batch(port.sock, [frame(guest, port.mac, b"R", s, args.rx_len) for s in range(BATCH)])
    t0 = time.monotonic()
    stop = t0 + args.rx_seconds
    seq = 0
    while time.monotonic() < stop:
        count = batch.send(seq)
        if count > 0:
            sent += count
            sent_bytes += batch.lengths(count)
            seq += count
        else:
            dropped += 1
            select.select([], [port.sock], [], 0.001)
    secs = time.monotonic() - t0
    for _ in range(5):
        port.send(frame(guest, port.mac, b"F", seq, 60))
        time.sleep(0.05)
    out["host_tx"] = {"frames": sent, "bytes": sent_bytes, "seconds": round(secs, 6), "send_busy": dropped,
                      "mbps": round(sent_bytes * 8 / secs / 1e6, 3) if secs else None}
    out["ok"] = True
    print(json.dumps(out), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--iface", required=True)
    e.add_argument("--guest-frames", type=int, default=4)
    e.add_argument("--pings", type=int, default=8)
    e.add_argument("--len", type=int, default=128)
    e.add_argument("--timeout", type=float, default=60)
    b = sub.add_parser("bench")
    b.add_argument("--iface", required=True)
    b.add_argument("--rx-seconds", type=float, default=3)
    b.add_argument("--rx-len", type=int, default=1514)
    b.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    return echo(args) if args.mode == "echo" else bench(args)


if __name__ == "__main__":
    sys.exit(main())
