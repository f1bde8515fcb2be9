#!/usr/bin/env python3
# A line-for-line Python port of Firecracker's example page-fault handler
# (src/firecracker/examples/uffd/on_demand_handler.rs and uffd_utils.rs at
# firecracker-microvm/firecracker 81b38b9, Apache-2.0), kept to check that a
# handler written for Firecracker serves swiftlet-vmm unchanged: it receives
# the message with a 1024-byte buffer, reads only base_host_virt_addr, size,
# offset and page_size, asserts that the regions' sizes add up to the memory
# file's size, and fills each fault with one UFFDIO_COPY (EEXIST ignored,
# EAGAIN retried, REMOVE unregistered). Needs no Rust toolchain.
#
#   scripts/firecracker-uffd-handler.py SOCKET MEMORY_FILE
#
# then PUT /snapshot/load {"mem_backend": {"backend_type": "Uffd",
# "backend_path": SOCKET}, ...} (docs/snapshots.md, "Uffd backend").
import array, ctypes, fcntl, json, mmap, os, select, socket, struct, sys
UFFDIO_COPY = 0xc028aa03
UFFDIO_UNREGISTER = 0x8010aa01
sock_path, mem_path = sys.argv[1], sys.argv[2]
f = open(mem_path, 'rb')
size = os.fstat(f.fileno()).st_size
backing = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
base_src = ctypes.addressof(ctypes.c_char.from_buffer(backing))
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sock_path); listener.listen()
stream, _ = listener.accept()
msg, anc, flags, _ = stream.recvmsg(1024, socket.CMSG_SPACE(4))
fds = array.array('i')
for level, kind, data in anc:
    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
        fds.frombytes(data[:4])
assert len(fds) == 1, "no uffd"
uffd = fds[0]
body = msg.decode('utf-8')
mappings = json.loads(body)
regions = [(m['base_host_virt_addr'], m['size'], m['offset'], m['page_size']) for m in mappings]
memsize = sum(r[1] for r in regions)
assert memsize == size, (memsize, size)
page_size = regions[0][3]
assert page_size & (page_size - 1) == 0
print("fc-port: body", body, file=sys.stderr)
copied = 0
poller = select.poll()
poller.register(stream.fileno(), select.POLLIN | select.POLLRDHUP)
poller.register(uffd, select.POLLIN)
done = False
while not done:
    for fd, ev in poller.poll():
        if fd == uffd and ev & select.POLLIN:
            deferred = []
            while True:
                events = list(deferred); deferred = []
                while True:
                    try:
                        raw = os.read(uffd, 32)
                    except BlockingIOError:
                        break
                    events.append(raw)
                for raw in events:
                    ev_type = raw[0]
                    if ev_type == 0x12:  # UFFD_EVENT_PAGEFAULT
                        addr = struct.unpack_from('Q', raw, 16)[0]
                        dst = addr & ~(page_size - 1)
                        region = next(r for r in regions if r[0] <= dst < r[0] + r[1])
                        src = base_src + region[2] + (dst - region[0])
                        req = bytearray(struct.pack('QQQQq', dst, src, page_size, 0, 0))
                        try:
                            fcntl.ioctl(uffd, UFFDIO_COPY, req)
                            copied += 1
                        except OSError as e:
                            if e.errno == 17: pass
                            elif e.errno == 11: deferred.append(raw)
                            else: raise
                    elif ev_type == 0x15:  # REMOVE
                        start, end = struct.unpack_from('QQ', raw, 8)
                        fcntl.ioctl(uffd, UFFDIO_UNREGISTER, struct.pack('QQ', start, end - start))
                    else:
                        raise SystemExit("Unexpected event on userfaultfd")
                if not deferred: break
        elif fd == stream.fileno() and ev & (select.POLLRDHUP | select.POLLHUP):
            done = True
print(f"fc-port: VMM gone, {copied} pages copied", file=sys.stderr)
