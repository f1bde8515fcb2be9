#!/usr/bin/env python3
"""A1-A3: the guest agent, Swiftlet's swiftlet-agent vs QEMU's qemu-ga.

Both VMMs boot the same default guest (vmlinux + initramfs.cpio, 1 vCPU).

  Swiftlet  swiftlet-vmm with a vsock device. The kernel parameter
            `swiftlet.agent` makes /init start /bin/swiftlet-agent and wait.
            The client speaks docs/agent.md over the VMM's hybrid vsock socket
            (`CONNECT 1024`).
  QEMU      `-M microvm` with a virtio-serial port named
            org.qemu.guest_agent.0. Debian's qemu-ga (package
            qemu-guest-agent) and its shared libraries are added as a second
            cpio archive after the image's initramfs, and run by
            `swiftlet.cmd=`. The client speaks QGA's JSON on the chardev
            socket. QEMU has no hybrid vsock, and this host has no vhost-vsock,
            so swiftlet-agent cannot run under QEMU here.

  A1  exec round trip: run `true` (argv ["true"]; busybox's applet) and wait
      for its exit status. Swiftlet: one connection, hello, exec, until
      `exit`. QGA: `guest-exec` with capture-output, then `guest-exec-status`
      polled with no pause until `exited`.
  A2  bulk output: --bulk-mib (default 16) MiB out of the guest. Swiftlet:
      exec `head -c SIZE /dev/zero`, its stdout counted. QGA caps a
      guest-exec's captured output at 16 MiB, so it reads /dev/zero with
      guest-file-open and guest-file-read of 4 MiB (base64 in JSON).
  A3  ping round trip: Swiftlet `ping` on a new connection; QGA `guest-ping`
      on its open channel.

Each VM boots once per round. Rounds interleave the two VMMs, and each
operation is repeated `--repeat` times per VM. The medians are over all
repetitions of all rounds.

    python3 benchmarks/agent.py [--runs 3] [--repeat 5] [--json FILE] [--write]
"""
import argparse
import base64
import json
import os
import pathlib
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import snapshot as common  # noqa: E402  (Child, QEMU_CPU, formatting, machine notes)

ROOT = common.ROOT
SECTION_BEGIN, SECTION_END = "<!-- agent:begin -->", "<!-- agent:end -->"
Failure = common.Failure

# ---------------------------------------------------------------- cpio (newc)


def cpio_entry(name, mode, data=b"", ino=[1]):
    ino[0] += 1
    header = b"070701" + b"".join(b"%08X" % v for v in (
        ino[0], mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0))
    out = header + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def qemu_ga_overlay(path):
    """A cpio archive with qemu-ga and the shared libraries `ldd` names, at their own paths."""
    binary = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
    if not os.path.exists(binary):
        raise Failure("qemu-ga is missing: apt-get install qemu-guest-agent")
    files = [binary]
    for line in subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            files.append(parts[2])
        elif parts and parts[0].startswith("/"):
            files.append(parts[0])
    dirs, out = set(), b""
    for file in files:
        parent = os.path.dirname(file).lstrip("/")
        parts = parent.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                out += cpio_entry(d, 0o040755)
        out += cpio_entry(file.lstrip("/"), 0o100755, pathlib.Path(file).read_bytes())
    out += cpio_entry("TRAILER!!!", 0)
    pathlib.Path(path).write_bytes(out)
    return len(out)


# ---------------------------------------------------------------- clients


def unix_connect(path, timeout):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def recv_exact(sock, count):
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise Failure(f"connection closed after {len(data)} of {count} bytes")
        data += chunk
    return bytes(data)


class SwiftletAgent:
    """docs/agent.md over the VMM's hybrid vsock socket: one connection per request."""

    def __init__(self, uds, timeout):
        self.uds, self.timeout = uds, timeout

    def connect(self):
        sock = unix_connect(self.uds, self.timeout)
        sock.sendall(b"CONNECT 1024\n")
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(1)
            if not chunk:
                sock.close()
                raise ConnectionError("no OK from the VMM: nothing listens on port 1024 yet")
            line += chunk
        if not line.startswith(b"OK "):
            raise Failure(f"vsock CONNECT answered {line!r}")
        self.send(sock, 0x01, struct.pack("<H", 1))
        kind, body = self.receive(sock)
        if kind != 0x02:
            raise Failure(f"hello answered with frame type {kind:#x}: {body[:200]!r}")
        return sock

    def wait_ready(self, deadline):
        while True:
            try:
                self.connect().close()
                return
            except (ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise Failure("swiftlet-agent did not answer")
                time.sleep(0.02)

    @staticmethod
    def send(sock, kind, body=b""):
        sock.sendall(struct.pack("<IB", len(body) + 1, kind) + body)

    @staticmethod
    def receive(sock):
        length, kind = struct.unpack("<IB", recv_exact(sock, 5))
        return kind, recv_exact(sock, length - 1)

    @staticmethod
    def strings(values):
        out = struct.pack("<I", len(values))
        for value in values:
            data = value.encode()
            out += struct.pack("<I", len(data)) + data
        return out

    def exec(self, argv):
        """Runs argv; returns (exit kind, value, stdout bytes counted)."""
        sock = self.connect()
        try:
            self.send(sock, 0x10, self.strings(argv) + self.strings([]) + struct.pack("<I", 0) + struct.pack("<BHH", 0, 24, 80))
            counted = 0
            while True:
                kind, body = self.receive(sock)
                if kind == 0x13:
                    counted += len(body)
                elif kind == 0x17:
                    exit_kind, value = struct.unpack("<Bi", body)
                    return exit_kind, value, counted
                elif kind == 0x03:
                    raise Failure(f"agent error: {body[8:].decode(errors='replace')}")
        finally:
            sock.close()

    def ping(self):
        sock = self.connect()
        try:
            self.send(sock, 0x50, struct.pack("<Q", 7))
            kind, body = self.receive(sock)
            if kind != 0x51 or body != struct.pack("<Q", 7):
                raise Failure(f"ping answered {kind:#x} {body!r}")
        finally:
            sock.close()


class QGA:
    """QEMU's guest agent protocol: JSON commands and replies on the chardev socket."""

    def __init__(self, path, child, timeout):
        self.path, self.child, self.timeout = path, child, timeout
        self.sock = common.wait_for_socket(path, timeout, child)
        self.buffer = b""

    def sync(self, deadline):
        """guest-sync-delimited until the agent answers (it starts after the guest boots).
        QEMU may reset a connection made while the guest's port is still closed: reconnect then."""
        token = 4242
        self.sock.settimeout(1)
        while True:
            try:
                self.sock.sendall(json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": token}}).encode() + b"\n")
                while True:
                    reply = self.read_reply(discard_until_ff=True)
                    if reply.get("return") == token:
                        # Earlier syncs may still be answered: a last one, read to its
                        # own reply, drains them in order.
                        self.sock.settimeout(self.timeout)
                        self.sock.sendall(json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": token + 1}}).encode() + b"\n")
                        while self.read_reply(discard_until_ff=True).get("return") != token + 1:
                            pass
                        return
            except socket.timeout:
                pass
            except (ConnectionError, Failure):
                self.sock.close()
                time.sleep(0.2)
                self.sock = common.wait_for_socket(self.path, self.timeout, self.child)
                self.sock.settimeout(1)
                self.buffer = b""
            if time.monotonic() > deadline:
                raise Failure("qemu-ga did not answer guest-sync-delimited")

    def read_reply(self, discard_until_ff=False):
        while True:
            if discard_until_ff:
                index = self.buffer.find(b"\xff")
                if index >= 0:
                    self.buffer = self.buffer[index + 1:]
                    discard_until_ff = False
            if not discard_until_ff:
                index = self.buffer.find(b"\n")
                if index >= 0:
                    line, self.buffer = self.buffer[:index], self.buffer[index + 1:]
                    if line.strip():
                        return json.loads(line)
                    continue
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise Failure("qemu-ga channel closed")
            self.buffer += chunk

    def call(self, command, arguments=None):
        message = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        reply = self.read_reply()
        if "error" in reply:
            raise Failure(f"qemu-ga {command}: {reply['error']}")
        return reply.get("return")

    def exec(self, argv):
        pid = self.call("guest-exec", {"path": "/bin/busybox", "arg": argv, "capture-output": True})["pid"]
        while True:
            status = self.call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return status

    def read_zero(self, total, chunk=4 << 20):
        handle = self.call("guest-file-open", {"path": "/dev/zero", "mode": "r"})
        counted = 0
        try:
            while counted < total:
                reply = self.call("guest-file-read", {"handle": handle, "count": min(chunk, total - counted)})
                counted += len(base64.b64decode(reply["buf-b64"]))
        finally:
            self.call("guest-file-close", {"handle": handle})
        return counted

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------- one VM per round


def swiftlet_round(args, guest, work, samples):
    uds = work / "v.sock"
    cmdline = (guest / "cmdline").read_text().strip() + " swiftlet.agent"
    argv = [args.swiftlet, "--kernel", str(guest / "vmlinux"), "--initrd", str(guest / "initramfs.cpio"),
            "--cmdline", cmdline, "--cpus", "1", "--memory", args.memory, "--vsock", f"cid=3,uds={uds}"]
    child = common.Child(argv, work, "swiftlet")
    try:
        agent = SwiftletAgent(uds, args.timeout)
        deadline = time.monotonic() + args.boot_timeout
        while not uds.exists():
            if time.monotonic() > deadline or child.process.poll() is not None:
                raise Failure(f"swiftlet: no vsock socket; {child.tail()}")
            time.sleep(0.01)
        agent.wait_ready(deadline)
        for _ in range(args.repeat):
            start = time.monotonic()
            agent.ping()
            samples.append({"ping": time.monotonic() - start})
            start = time.monotonic()
            kind, value, _ = agent.exec(["true"])
            if (kind, value) != (0, 0):
                raise Failure(f"swiftlet: true ended with {kind}/{value}")
            samples.append({"exec": time.monotonic() - start})
        for _ in range(args.bulk_repeat):
            start = time.monotonic()
            _, _, counted = agent.exec(["head", "-c", str(args.bulk), "/dev/zero"])
            elapsed = time.monotonic() - start
            if counted != args.bulk:
                raise Failure(f"swiftlet: head gave {counted} bytes, not {args.bulk}")
            samples.append({"bulk": elapsed, "bulk_bytes": args.bulk})
    finally:
        child.kill()


def qemu_round(args, guest, work, samples):
    initrd = work / "initrd-qga.cpio"
    if not initrd.exists():
        with open(initrd, "wb") as out:
            out.write((guest / "initramfs.cpio").read_bytes())
        overlay = work / "qga-overlay.cpio"
        qemu_ga_overlay(overlay)
        with open(initrd, "ab") as out:
            out.write(overlay.read_bytes())
    qga_sock = work / "qga.sock"
    # /dev/vport0p1: the only virtio-serial port (devtmpfs names it; no udev symlinks).
    cmdline = ((guest / "cmdline").read_text().strip() +
               " swiftlet.cmd=/usr/sbin/qemu-ga -m virtio-serial -p /dev/vport0p1 -t /tmp -f /tmp/qga.pid")
    argv = [args.qemu, "-M", "microvm,acpi=on", "-accel", "kvm", "-cpu", common.QEMU_CPU,
            "-m", args.memory, "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
            "-serial", "stdio", "-no-reboot", "-kernel", str(guest / "vmlinux"), "-initrd", str(initrd),
            "-append", cmdline,
            "-chardev", f"socket,path={qga_sock},server=on,wait=off,id=qga0",
            "-device", "virtio-serial-device", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
    child = common.Child(argv, work, "qemu")
    qga = None
    try:
        deadline = time.monotonic() + args.boot_timeout
        qga = QGA(qga_sock, child, args.timeout)
        qga.sync(deadline)
        for _ in range(args.repeat):
            start = time.monotonic()
            qga.call("guest-ping")
            samples.append({"ping": time.monotonic() - start})
            start = time.monotonic()
            status = qga.exec(["true"])
            if status.get("exitcode") != 0:
                raise Failure(f"qemu-ga: true ended with {status}")
            samples.append({"exec": time.monotonic() - start})
        for _ in range(args.bulk_repeat):
            start = time.monotonic()
            counted = qga.read_zero(args.bulk)
            elapsed = time.monotonic() - start
            if counted != args.bulk:
                raise Failure(f"qemu-ga: read {counted} bytes, not {args.bulk}")
            samples.append({"bulk": elapsed, "bulk_bytes": args.bulk})
    finally:
        if qga:
            qga.close()
        child.kill()


# ---------------------------------------------------------------- report


def throughput(st, size):
    if st is None:
        return None
    median, low, high, n = st
    return size / median, size / high, size / low, n


def fmt_rate(value):
    mib = value / (1 << 20)
    return f"{mib:.0f} MiB/s" if mib >= 10 else f"{mib:.2f} MiB/s"


def report(meta, results, failures):
    sw, qe = results.get("Swiftlet", []), results.get("QEMU", [])
    rows = []
    for key, title in (("exec", "A1 exec `true`, round trip"), ("ping", "A3 ping round trip")):
        a, b = common.stat(sw, key), common.stat(qe, key)
        rows.append(f"| {title} | {common.cell(a, common.fmt_time)} | {common.cell(b, common.fmt_time)} | {common.ratio(a, b)} |")
    size = meta["bulk"]
    a, b = throughput(common.stat(sw, "bulk"), size), throughput(common.stat(qe, "bulk"), size)
    bulk_ratio = f"{a[0] / b[0]:.2f}×" if a and b else "—"
    rows.append(f"| A2 {size >> 20} MiB out of the guest | {common.cell(a, fmt_rate)} | {common.cell(b, fmt_rate)} | {bulk_ratio} (higher is better) |")
    lines = [
        f"Command: `{meta['produced_by']}`",
        "",
        f"Machine: {meta['machine']}; load average before: {' '.join(meta['load'])}. swiftlet-vmm: `{meta.get('swiftlet', '?')}`.",
        "",
        f"{meta['runs']} rounds, interleaved. Each round booted each VM once. In each round there were "
        f"{meta['repeat']} exec/ping repetitions and {meta['bulk_repeat']} bulk transfers per VM. "
        "The cells give the median, with the range in brackets.",
        "",
        "| | Swiftlet (swiftlet-agent, vsock) | QEMU (qemu-ga, virtio-serial) | ratio |",
        "|---|---|---|---|",
        *rows,
        "",
        "A2 on the QEMU side uses guest-file-read of /dev/zero, in 4 MiB base64 chunks. qemu-ga caps "
        "guest-exec's captured output at 16 MiB, so it cannot stream a command's output. swiftlet-agent "
        "streams a command's stdout: that is `head -c SIZE /dev/zero`, one process. The default size is "
        "16 MiB, not 256 MiB: qemu-ga moves about 0.2 MiB/s here (every virtio-serial interrupt runs "
        "guest kernel code, which kvm_pvm emulates), so 256 MiB would take about 20 minutes per "
        "transfer. `--bulk-mib 256` runs the full size.",
    ]
    if failures:
        lines += ["", "Failures:", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5, help="exec and ping repetitions per VM per round")
    parser.add_argument("--bulk-repeat", type=int, default=1, help="bulk transfers per VM per round")
    parser.add_argument("--bulk-mib", type=int, default=16, help="MiB moved out of the guest by A2")
    parser.add_argument("--memory", default="512M")
    parser.add_argument("--vmms", default="swiftlet,qemu")
    parser.add_argument("--boot-timeout", type=float, default=240)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--swiftlet", default=None, help="swiftlet-vmm (default .build/release, then .build/debug)")
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--guest", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--write", nargs="?", const=str(ROOT / "BENCHMARKS.md"), default=None)
    args = parser.parse_args()
    args.bulk = args.bulk_mib << 20
    args.produced_by = ("python3 benchmarks/agent.py " + shlex.join(sys.argv[1:])).strip()
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, common.on_signal)
    if args.swiftlet is None:
        candidates = [ROOT / ".build/release/swiftlet-vmm", ROOT / ".build/debug/swiftlet-vmm"]
        args.swiftlet = str(next((c for c in candidates if c.exists()), candidates[0]))
    guest = common.guest_dir(args).resolve()
    meta = {"produced_by": args.produced_by, "machine": common.machine_notes(args), "load": common.loadavg(),
            "swiftlet": os.path.relpath(args.swiftlet, ROOT),
            "runs": args.runs, "repeat": args.repeat, "bulk_repeat": args.bulk_repeat, "bulk": args.bulk}
    names = {"swiftlet": ("Swiftlet", swiftlet_round), "qemu": ("QEMU", qemu_round)}
    vmms = [v.strip() for v in args.vmms.split(",") if v.strip()]
    results, failures = {names[v][0]: [] for v in vmms}, []
    with tempfile.TemporaryDirectory(prefix="swiftlet-agent-bench-") as folder:
        work = pathlib.Path(folder)
        for index in range(args.runs):
            order = vmms[index % len(vmms):] + vmms[:index % len(vmms)]
            for vmm in order:
                name, run = names[vmm]
                round_dir = work / f"{vmm}-{index}"
                round_dir.mkdir()
                if vmm == "qemu" and (work / "initrd-qga.cpio").exists():
                    os.link(work / "initrd-qga.cpio", round_dir / "initrd-qga.cpio")
                try:
                    run(args, guest, round_dir, results[name])
                    if vmm == "qemu" and not (work / "initrd-qga.cpio").exists():
                        os.link(round_dir / "initrd-qga.cpio", work / "initrd-qga.cpio")
                except Failure as failure:
                    failures.append(f"round {index + 1} {name}: {failure}")
                print(f"round {index + 1} {name} done", file=sys.stderr)
    text = report(meta, results, failures)
    print(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "failures": failures}, indent=1))
    if args.write:
        common.write_section(text, pathlib.Path(args.write), SECTION_BEGIN, SECTION_END, "Guest agent (A1-A3)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
