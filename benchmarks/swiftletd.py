#!/usr/bin/env python3
"""swiftletd benchmarks (D1-D4): API latency of define and of start-to-running
for a kit guest, VMs started per second, and how many 64 MiB kit VMs run at
once with the daemon's and each VMM's resident memory.

Starts its own swiftletd on a temporary socket and state folder, boots the
guest kit's `halt` program (halts with interrupts off: no CPU use), stops
every VM it started, and prints a Markdown report (stdout). Python 3.11,
standard library only. Needs /dev/kvm, `make -C guest-kit` and
`swift build -c release --product swiftletd --product swiftlet-vmm`
(or --build-dir .build/debug).

    python3 benchmarks/swiftletd.py [--vms 100] [--runs 50]
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=120):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call(sock, method, path, body=None):
    connection = UnixConnection(sock)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    text = response.read()
    connection.close()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: {response.status} {text.decode(errors='replace')}")
    return json.loads(text) if text and response.getheader("Content-Type", "").startswith("application/json") else text


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def ms(seconds):
    return f"{seconds * 1000:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", default=os.path.join(ROOT, ".build/release"))
    parser.add_argument("--runs", type=int, default=50, help="defines and start/destroy cycles timed (D1, D2)")
    parser.add_argument("--vms", type=int, default=100, help="VMs run at once (D3, D4)")
    parser.add_argument("--parallel", type=int, default=8, help="concurrent API clients for D3")
    parser.add_argument("--memory-mib", type=int, default=64)
    args = parser.parse_args()

    kernel = os.path.join(ROOT, "guest-kit/build/halt.elf")
    daemon_binary = os.path.join(args.build_dir, "swiftletd")
    vmm_binary = os.path.join(args.build_dir, "swiftlet-vmm")
    for path in (kernel, daemon_binary, vmm_binary):
        if not os.path.exists(path):
            sys.exit(f"missing {path}: run make -C guest-kit and swift build -c release")

    work = tempfile.mkdtemp(prefix="swiftletd-bench-")
    sock = os.path.join(work, "swiftletd.sock")
    log = open(os.path.join(work, "swiftletd.log"), "w")
    daemon = subprocess.Popen([daemon_binary, "--state-dir", os.path.join(work, "state"), "--socket", sock,
                               "--vmm", vmm_binary, "--image-dir", os.path.dirname(kernel),  # swiftletd's image allow-list
                               "--no-default-network", "--log-level", "warning"], stdout=log, stderr=log)
    started = []
    try:
        for _ in range(500):
            try:
                version = call(sock, "GET", "/v1/version")
                break
            except (OSError, RuntimeError):
                time.sleep(0.02)
        else:
            sys.exit("swiftletd did not start")
        print(f"swiftletd {version['version']}, control API: {version['control_api']}, VMM {vmm_binary}", file=sys.stderr)

        # D1: define latency.
        define_times = []
        for index in range(args.runs):
            body = {"name": f"def-{index}", "kernel": kernel, "memory_mib": args.memory_mib}
            begin = time.perf_counter()
            call(sock, "POST", "/v1/vms", body)
            define_times.append(time.perf_counter() - begin)

        # D2: start-to-running (the call answers once the VMM's control API does) and destroy.
        call(sock, "POST", "/v1/vms", {"name": "cycle", "kernel": kernel, "memory_mib": args.memory_mib})
        start_times, destroy_times = [], []
        for _ in range(args.runs):
            begin = time.perf_counter()
            info = call(sock, "POST", "/v1/vms/cycle/start")
            start_times.append(time.perf_counter() - begin)
            assert info["state"] == "running", info
            begin = time.perf_counter()
            call(sock, "POST", "/v1/vms/cycle/destroy")
            destroy_times.append(time.perf_counter() - begin)

        # D3: start --vms VMs from --parallel clients; D4: all of them at once.
        names = [f"vm-{index}" for index in range(args.vms)]
        for name in names:
            call(sock, "POST", "/v1/vms", {"name": name, "kernel": kernel, "memory_mib": args.memory_mib})
        begin = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            infos = list(pool.map(lambda name: call(sock, "POST", f"/v1/vms/{name}/start"), names))
        elapsed = time.perf_counter() - begin
        started = names
        running = [info for info in infos if info["state"] == "running"]
        time.sleep(2)
        listed = call(sock, "GET", "/v1/vms")
        still_running = [vm for vm in listed if vm["state"] == "running" and vm["definition"]["name"].startswith("vm-")]
        vmm_rss = [rss_kib(vm["pid"]) for vm in still_running]
        vmm_rss = [value for value in vmm_rss if value]
        daemon_rss = rss_kib(daemon.pid)
        with open("/proc/meminfo") as meminfo:
            available = next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:"))

        print("## D1-D4 — swiftletd\n")
        print(f"swiftletd and swiftlet-vmm from `{os.path.relpath(args.build_dir, ROOT)}`, kit guest `halt.elf`, "
              f"{args.memory_mib} MiB per VM, control API {'on' if version['control_api'] else 'off'}. "
              f"`python3 benchmarks/swiftletd.py --runs {args.runs} --vms {args.vms}`.\n")
        print("| | measure | median | p95 | min |")
        print("|---|---|---|---|---|")
        print(f"| D1 | `POST /v1/vms` (define), {args.runs} runs, ms | {ms(statistics.median(define_times))} | {ms(percentile(define_times, 0.95))} | {ms(min(define_times))} |")
        print(f"| D2 | `POST .../start` to running, {args.runs} runs, ms | {ms(statistics.median(start_times))} | {ms(percentile(start_times, 0.95))} | {ms(min(start_times))} |")
        print(f"| D2 | `POST .../destroy` to shut off, ms | {ms(statistics.median(destroy_times))} | {ms(percentile(destroy_times, 0.95))} | {ms(min(destroy_times))} |")
        print()
        print(f"| | measure | value |")
        print("|---|---|---|")
        print(f"| D3 | VMs started per second ({args.vms} starts, {args.parallel} clients) | {len(running) / elapsed:.1f} ({elapsed:.2f} s in all) |")
        print(f"| D4 | {args.memory_mib} MiB VMs running at once (goal 100) | {len(still_running)} of {args.vms} |")
        print(f"| D4 | swiftletd RSS with them | {daemon_rss / 1024:.1f} MiB |")
        if vmm_rss:
            print(f"| D4 | swiftlet-vmm RSS per VM: median / max | {statistics.median(vmm_rss) / 1024:.1f} / {max(vmm_rss) / 1024:.1f} MiB |")
            print(f"| D4 | all VMMs together | {sum(vmm_rss) / 1024:.0f} MiB (host MemAvailable then: {available / 1024 / 1024:.1f} GiB) |")
    finally:
        for name in started:
            try:
                call(sock, "POST", f"/v1/vms/{name}/destroy")
            except Exception:
                pass
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
