#!/usr/bin/env python3
"""L1: time from process start to the default Linux guest's /init marker.

Boots the same vmlinux + initramfs with the same kernel command line in
Swiftlet and in QEMU (-M microvm), interleaved round by round, and reports
the median time to `SWIFTLET-GUEST-READY` and to power-off (the guest runs
`true` through swiftlet.cmd and powers off).

    python3 benchmarks/linux-boot.py [--runs 3] [--cpus 1] [--json FILE] [--write]
    python3 benchmarks/linux-boot.py --from-json FILE [--write]
"""
import argparse
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARKER = b"SWIFTLET-GUEST-READY"


def guest_dir() -> pathlib.Path:
    path = subprocess.run([str(ROOT / "guest/build-image"), "--print-path"], check=True,
                          capture_output=True, text=True).stdout.strip()
    return pathlib.Path(path)


def commands(guest: pathlib.Path, cpus: int, memory: str, swiftlet: str, qemu: str):
    cmdline = (guest / "cmdline").read_text().strip() + " swiftlet.cmd=true"
    kernel, initrd = str(guest / "vmlinux"), str(guest / "initramfs.cpio")
    return {
        "Swiftlet": [swiftlet, "--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline,
                     "--cpus", str(cpus), "--memory", memory, "--serial", "stdio"],
        "QEMU microvm": [qemu, "-M", "microvm,acpi=on", "-accel", "kvm",
                         "-cpu", "host,-arch-capabilities,+xsaveerptr,-kvm-pv-ipi,-kvm-pv-sched-yield,-kvm-pv-unhalt",
                         "-m", memory, "-smp", str(cpus), "-nodefaults", "-no-user-config", "-nographic",
                         "-serial", "stdio", "-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append", cmdline],
    }


def run_once(argv, timeout: float):
    start = time.monotonic()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker_at, buffer = None, b""
    os.set_blocking(process.stdout.fileno(), True)
    while True:
        if time.monotonic() - start > timeout:
            process.kill()
            process.wait()
            return None, None, f"timeout after {timeout:.0f} s; last output: {buffer[-300:]!r}"
        chunk = process.stdout.read1(4096)
        if not chunk:
            break
        buffer += chunk
        if marker_at is None and MARKER in buffer:
            marker_at = time.monotonic() - start
    process.wait()
    total = time.monotonic() - start
    if marker_at is None or process.returncode != 0:
        return None, None, f"exit status {process.returncode}, marker {'seen' if marker_at else 'not seen'}; last output: {buffer[-300:]!r}"
    return marker_at, total, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--memory", default="256M")
    parser.add_argument("--timeout", type=float, default=400)
    parser.add_argument("--swiftlet", default=str(ROOT / ".build/release/swiftlet-vmm"))
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--write", nargs="?", const=str(ROOT / "BENCHMARKS.md"), metavar="FILE",
                        help="replace the L1 section of BENCHMARKS.md (or FILE)")
    parser.add_argument("--json", metavar="FILE",
                        help="also write every run (seconds to the marker and to power-off) as JSON")
    parser.add_argument("--from-json", metavar="FILE",
                        help="run nothing: report (and --write) the runs of an earlier --json")
    args = parser.parse_args()

    if args.from_json:
        saved = json.loads(pathlib.Path(args.from_json).read_text())
        for k in ("runs", "cpus", "memory"):
            setattr(args, k, saved["args"][k])
        guest_name, commands_shown, failures = saved["guest"], saved["commands"], saved["failures"]
        results = {name: [(x["marker_s"], x["poweroff_s"]) for x in runs] for name, runs in saved["runs"].items()}
    else:
        guest = guest_dir()
        guest_name = guest.name
        argvs = commands(guest, args.cpus, args.memory, args.swiftlet, args.qemu)
        commands_shown = {name: shlex.join(argv) for name, argv in argvs.items()}
        results = {name: [] for name in argvs}
        failures = []
        names = list(argvs)
        for round_number in range(args.runs):
            order = names[round_number % len(names):] + names[:round_number % len(names)]
            for name in order:
                marker, total, error = run_once(argvs[name], args.timeout)
                print(f"round {round_number + 1} {name}: " + (error or f"marker {marker:.2f} s, power-off {total:.2f} s"), file=sys.stderr)
                if error:
                    failures.append(f"{name}: {error}")
                else:
                    results[name].append((marker, total))

    lines = [f"Default guest ({guest_name}), {args.cpus} vCPU, {args.memory}, {args.runs} interleaved rounds; "
             f"time from process start.", "",
             "| VMM | runs ok | to SWIFTLET-GUEST-READY (median) | min | max | to power-off (median) | vs QEMU |",
             "|---|---|---|---|---|---|---|"]
    qemu_median = statistics.median(m for m, _ in results["QEMU microvm"]) if results.get("QEMU microvm") else None
    for name, samples in results.items():
        if not samples:
            lines.append(f"| {name} | 0/{args.runs} | — | — | — | — | — |")
            continue
        markers = [m for m, _ in samples]
        median = statistics.median(markers)
        ratio = f"{median / qemu_median:.2f}×" if qemu_median else "—"
        lines.append(f"| {name} | {len(samples)}/{args.runs} | {median:.1f} s | {min(markers):.1f} s | {max(markers):.1f} s | "
                     f"{statistics.median(t for _, t in samples):.1f} s | {ratio} |")
    lines += ["", "Commands:", ""] + [f"- {name}: `{shown}`" for name, shown in commands_shown.items()]
    lines += ["", f"Produced by: `python3 benchmarks/linux-boot.py --runs {args.runs} --cpus {args.cpus}`"]
    if failures:
        lines += ["", "Failures:", ""] + [f"- {failure}" for failure in failures]
    report = "\n".join(lines)
    print(report)
    if args.json and not args.from_json:
        pathlib.Path(args.json).write_text(json.dumps({
            "bench": "L1", "guest": guest_name, "args": vars(args), "commands": commands_shown,
            "runs": {name: [{"marker_s": m, "poweroff_s": t} for m, t in samples]
                     for name, samples in results.items()},
            "failures": failures}, indent=1))
    if args.write:
        path = pathlib.Path(args.write)
        text = path.read_text()
        begin, end = "<!-- L1:begin -->", "<!-- L1:end -->"
        section = f"{begin}\n{report}\n{end}"
        if begin in text and end in text:
            text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
        else:
            text += f"\n## L1 — default Linux guest, time to /init\n\n{section}\n"
        path.write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
