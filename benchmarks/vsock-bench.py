#!/usr/bin/env python3
"""V1/V2: virtio-vsock throughput and round-trip latency through swiftlet-vmm's
hybrid (Unix-socket) vsock.

V1 boots the guest kit's virtio-vsock program (a polling ring-3 driver, so the
numbers are the device's and the VMM's, not a guest kernel's) with the host
side here: a sink at <uds>_6000 (guest -> host), a source at <uds>_6001
(host -> guest) and an echo at <uds>_6002 (1-byte round trips, timed by the
guest's TSC).

V2 boots the default Linux guest (guest/build-image) and uses its
/bin/swiftlet-vsock: the guest sends to a host sink (timed on the host from
the first byte to end of file), the host sends to a guest listener that
answers with a checksum (timed on the host from CONNECT to the answer), and
the host times 1-byte round trips against a guest echo. Where guest kernel
code is emulated (kvm_pvm) V2 measures mostly the emulated guest kernel.

QEMU's vhost-vsock needs /dev/vhost-vsock (the vhost_vsock module); the
script says so and skips it when it is absent.

    python3 benchmarks/vsock-bench.py --runs 5 [--only V1,V2] [--bytes-mib 64] [--json FILE]

Run it under `flock /work/helpers/linux-boot.lock` on a shared host (V2
boots Linux). Prints a Markdown section for BENCHMARKS.md.
"""
import argparse
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VMM = os.path.join(ROOT, ".build/release/swiftlet-vmm")
KIT = os.path.join(ROOT, "guest-kit/build/virtio-vsock.elf")
GUEST = os.path.join(ROOT, ".cache/guest/current")


def listen(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(8)
    s.settimeout(600)
    return s


def sink(listener, result):
    c, _ = listener.accept()
    total, start = 0, None
    while True:
        data = c.recv(1 << 20)
        if not data:
            break
        if start is None:
            start = time.monotonic()
        total += len(data)
    result["bytes"], result["seconds"] = total, time.monotonic() - (start or time.monotonic())
    c.close()


def source(listener, count):
    c, _ = listener.accept()
    block = bytes(range(256)) * 4096
    sent = 0
    while sent < count:
        n = min(len(block), count - sent)
        c.sendall(block[:n])
        sent += n
    c.shutdown(socket.SHUT_WR)
    while c.recv(65536):
        pass
    c.close()


def echo(listener):
    c, _ = listener.accept()
    while True:
        data = c.recv(65536)
        if not data:
            break
        c.sendall(data)
    c.close()


def tsc_hz():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1e6)
    except OSError:
        pass
    return 0


def run_kit(count, pings):
    with tempfile.TemporaryDirectory(prefix="vsock-bench-") as folder:
        uds = os.path.join(folder, "v.sock")
        listeners = [listen(f"{uds}_{port}") for port in (6000, 6001, 6002)]
        result = {}
        threads = [threading.Thread(target=sink, args=(listeners[0], result), daemon=True),
                   threading.Thread(target=source, args=(listeners[1], count), daemon=True),
                   threading.Thread(target=echo, args=(listeners[2],), daemon=True)]
        for t in threads:
            t.start()
        cmdline = f"phases=txp bench_bytes={count} buf_alloc=262144 pings={pings}"
        hz = tsc_hz()
        if hz:
            cmdline += f" tsc_hz={hz}"
        command = [VMM, "--kernel", KIT, "--cpus", "1", "--memory", "256M", "--serial", "stdio",
                   "--cmdline", cmdline, "--vsock", f"cid=3,uds={uds}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        out = done.stdout
        if done.returncode != 0 or "PASS" not in out:
            raise RuntimeError(f"kit run failed ({done.returncode}): {out[-2000:]} {done.stderr[-1000:]}")
        values = {}
        for what in ("tx", "rx"):
            m = re.search(rf"BENCH vsock {what} bytes=(\d+) ns=(\d+) mbit_s=([\d.]+)", out)
            values[what] = float(m.group(3))
        m = re.search(r"BENCH vsock rtt pings=(\d+) median_ns=(\d+) mean_ns=(\d+) min_ns=(\d+)", out)
        values["rtt_us"] = int(m.group(2)) / 1000
        values["rtt_min_us"] = int(m.group(4)) / 1000
        return values, shown(command, uds)


def shown(command, uds):
    """The command as run, with repository paths relative and the temporary socket generic."""
    text = " ".join(shlex.quote(a) for a in command)
    return text.replace(uds, "/tmp/vsock-bench-XXXX/v.sock").replace(ROOT + "/", "")


def read_line(sock):
    line = b""
    while not line.endswith(b"\n"):
        data = sock.recv(1)
        if not data:
            break
        line += data
    return line.decode(errors="replace")


def connect_guest(uds, port, deadline):
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(uds)
            s.sendall(f"CONNECT {port}\n".encode())
            if read_line(s).startswith("OK "):
                return s
        except OSError:
            pass
        s.close()
        time.sleep(0.2)
    raise RuntimeError(f"could not connect to guest port {port}")


def run_linux(count, pings):
    swiftlet = os.path.join(ROOT, ".build/release/swiftlet")
    with tempfile.TemporaryDirectory(prefix="vsock-bench-") as folder:
        uds = os.path.join(folder, "v.sock")
        tx_listener = listen(f"{uds}_6000")
        result = {}
        tx_thread = threading.Thread(target=sink, args=(tx_listener, result), daemon=True)
        tx_thread.start()
        script = (f"swiftlet-vsock listen 5002 echo 1 & swiftlet-vsock listen 5001 sum 1 & sleep 1; "
                  f"echo GUEST-LISTENING; swiftlet-vsock connect 2 6000 send {count} >/dev/null; echo TX-DONE; wait")
        command = [swiftlet, "run", "--no-snapshot", "--memory", "256M", "--vsock", f"cid=3,uds={uds}", "--", "sh", "-c", script]
        log = open(os.path.join(folder, "console"), "w+")
        vm = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 600

            def wait_for(text):
                while time.monotonic() < deadline:
                    log.seek(0)
                    if text in log.read():
                        return
                    if vm.poll() is not None:
                        break
                    time.sleep(0.1)
                log.seek(0)
                raise RuntimeError(f"no {text}: {log.read()[-2000:]}")

            wait_for("TX-DONE")
            tx_thread.join(60)
            values = {"tx": result["bytes"] * 8 / result["seconds"] / 1e6}
            # Host to guest: CONNECT to the summing listener, send, wait for the answer.
            s = connect_guest(uds, 5001, deadline)
            start = time.monotonic()
            block = bytes(range(256)) * 4096
            sent = 0
            while sent < count:
                n = min(len(block), count - sent)
                s.sendall(block[:n])
                sent += n
            s.shutdown(socket.SHUT_WR)
            answer = read_line(s)
            seconds = time.monotonic() - start
            s.close()
            if not answer.startswith("SUM ") or int(answer.split()[2]) != count:
                raise RuntimeError(f"rx answer {answer!r}")
            values["rx"] = count * 8 / seconds / 1e6
            # Round trips against the guest's echo.
            s = connect_guest(uds, 5002, deadline)
            samples = []
            for _ in range(pings):
                t0 = time.monotonic()
                s.sendall(b"x")
                if s.recv(1) != b"x":
                    raise RuntimeError("echo broke")
                samples.append(time.monotonic() - t0)
            s.close()
            values["rtt_us"] = statistics.median(samples) * 1e6
            values["rtt_min_us"] = min(samples) * 1e6
            vm.wait(120)
            return values, shown(command, uds)
        finally:
            if vm.poll() is None:
                vm.terminate()
                vm.wait(30)


def summarize(name, runs):
    def cell(key, digits):
        values = [r[key] for r in runs]
        fmt = f"{{:,.{digits}f}}"
        return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"
    return f"| {name} (n={len(runs)}) | {cell('tx', 0)} | {cell('rx', 0)} | {cell('rtt_us', 1)} | {cell('rtt_min_us', 1)} |"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="V1,V2")
    parser.add_argument("--bytes-mib", type=int, default=64, help="V1 bytes per direction (MiB)")
    parser.add_argument("--linux-mib", type=int, default=8, help="V2 bytes per direction (MiB)")
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--linux-pings", type=int, default=200)
    parser.add_argument("--swiftlet", default=None, help="swiftlet-vmm for V1 (default .build/release/swiftlet-vmm)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write every run's values here")
    args = parser.parse_args()
    if args.swiftlet:
        global VMM
        VMM = os.path.abspath(args.swiftlet)
    saved = {"args": vars(args), "loadavg_start": list(os.getloadavg()), "runs": {}, "commands": {}}
    only = set(args.only.split(","))
    rows, commands = [], []
    load = os.getloadavg()
    if "V1" in only:
        runs = []
        for i in range(args.runs):
            values, command = run_kit(args.bytes_mib << 20, args.pings)
            print(f"V1 run {i + 1}: {values}", file=sys.stderr)
            runs.append(values)
        rows.append(summarize("V1 Swiftlet, kit driver", runs))
        saved["runs"]["V1"], saved["commands"]["V1"] = runs, command
        commands.append(f"    # V1 (host side: sink, source and echo listeners in vsock-bench.py)\n    {command}")
    if "V2" in only:
        runs = []
        for i in range(args.runs):
            values, command = run_linux(args.linux_mib << 20, args.linux_pings)
            print(f"V2 run {i + 1}: {values}", file=sys.stderr)
            runs.append(values)
        rows.append(summarize("V2 Swiftlet, Linux guest + swiftlet-vsock", runs))
        saved["runs"]["V2"], saved["commands"]["V2"] = runs, command
        commands.append(f"    # V2\n    {command}")
    vhost = os.path.exists("/dev/vhost-vsock")
    print("| | guest→host Mbit/s | host→guest Mbit/s | round trip µs (median) | round trip µs (min) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(row)
    print()
    print(f"Medians (min–max) of {args.runs} runs; load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start.")
    if not vhost:
        print("QEMU's vhost-vsock-pci is not measured: this host has no /dev/vhost-vsock (no vhost_vsock module).")
    print("\nCommands:\n")
    print("\n".join(commands))
    print(f"\nProduced by: `python3 benchmarks/vsock-bench.py --runs {args.runs} --only {args.only} "
          f"--bytes-mib {args.bytes_mib} --linux-mib {args.linux_mib}`")
    if args.json:
        saved["vhost_vsock"] = vhost
        with open(args.json, "w") as f:
            json.dump(saved, f, indent=1)


if __name__ == "__main__":
    main()
