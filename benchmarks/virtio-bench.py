#!/usr/bin/env python3
"""Swiftlet virtio benchmarks: the same guest-kit binary on Swiftlet and on
QEMU microvm (virtio-pci, modern only), interleaved, plus host fio.

    python3 benchmarks/virtio-bench.py [--runs 3] [--only P4,P5] [--write]

P4  virtio-blk: guest-kit blk-bench.elf on a raw image file (the same file
    for every VMM): 4 KiB random reads at queue depth 32, 1 MiB sequential
    reads and 1 MiB sequential writes (4 in flight), each for --seconds.
    Host fio runs the same three jobs on the same file (--no-fio skips it).
Q4  qcow2: blk-bench (plus 4 KiB random writes) on a fresh qcow2 overlay
    (qemu-img create -b the P4 raw image, so reads of unwritten clusters go
    to the backing file) made anew for every run, on Swiftlet's qcow2 engine
    and QEMU's qcow2 driver; "Swiftlet raw" runs the same on the raw image
    itself (its random writes land in that file, already allocated).
P5  virtio-net: guest-kit net-bench.elf with a tap inside a network
    namespace this script creates (and deletes); benchmarks/kit-net-peer.py
    is the host end. TX = guest -> host frames, RX = host -> guest frames,
    both counted by the guest.

--event-idx both runs every VMM twice per round, with and without
VIRTIO_F_EVENT_IDX (guest command line event_idx=0), to show its effect.
--transports pci,mmio runs Swiftlet once per virtio transport (row
"Swiftlet virtio-mmio" for --transport mmio); the default is pci only.

The guest measures time with the TSC; the script passes the host's TSC rate
(tsc_hz=, from /proc/cpuinfo when the TSC is constant) so that every VMM
uses the same clock. Rounds rotate which VMM goes first. Reports medians and
Swiftlet/QEMU ratios as Markdown; --write puts them into BENCHMARKS.md
(sections P4, P5). Needs root (netns, tap), /dev/kvm, QEMU, fio.
Python 3.11 standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import bench as core  # noqa: E402  (tsc_mhz, machine_info, replace_section helpers)

LABELS = {"swiftlet": "Swiftlet", "qemu": "QEMU microvm"}
TITLES = {"P4": "P4 — virtio-blk throughput (guest kit, polled)",
          "Q4": "Q4 — qcow2 overlay throughput (guest kit, polled)",
          "P5": "P5 — virtio-net throughput through a tap (guest kit, polled)"}
BLK_PAT = re.compile(r"^BENCH blk (\w+) iops=(\d+) mb_s=([\d.]+) ios=(\d+) ms=(\d+).*?kicks=(\d+) suppressed=(\d+)",
                     re.M)
NET_PAT = re.compile(r"^BENCH net (tx|rx) frames=(\d+) bytes=(\d+) ms=(\d+) pps=(\d+) mbit_s=([\d.]+)(.*)$", re.M)
TSC_PAT = re.compile(r"tsc_hz=(\d+) tsc_source=(\w+)")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- VMM command lines
class VMM(core.VMM):
    """bench.py's VMM command line, plus the virtio disk or tap under test."""

    def __init__(self, name: str, binary: str, args, transport: str = "pci"):
        super().__init__(name, binary, args.qemu_machine, args.qemu_cpu)
        self.memory = args.memory
        self.transport = transport

    @property
    def label(self) -> str:
        return LABELS[self.name] + (" virtio-mmio" if self.transport == "mmio" else "")

    def argv(self, elf: Path, cmdline: str, disk: Path | None = None, tap: str | None = None,
             disk_format: str = "raw") -> list[str]:
        a = super().argv(elf, cmdline, self.memory)
        if self.name == "swiftlet":
            if self.transport == "mmio":
                a += ["--transport", "mmio"]
            if disk:
                a += ["--disk", f"path={disk}" + (f",format={disk_format}" if disk_format != "raw" else "")]
            if tap:
                a += ["--net", f"tap={tap}"]
            return a
        if disk:
            a += ["-drive", f"file={disk},if=none,id=d0,format={disk_format},cache=writeback,aio=threads",
                  "-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]
        if tap:
            a += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off",
                  "-device", "virtio-net-pci,netdev=n0,disable-legacy=on"]
        return a


def shown(argv: list[str]) -> str:
    """A command line for the report, with repository paths made relative."""
    return shlex.join(argv).replace(str(REPO) + "/", "")


def run(argv: list[str], timeout: float) -> tuple[int | None, str, str]:
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        return p.returncode, core.clean(p.stdout), core.clean(p.stderr)
    except subprocess.TimeoutExpired as e:
        return None, core.clean(e.stdout or b""), core.clean(e.stderr or b"") + f"\n(timed out after {timeout:g} s)"
    except OSError as e:
        return None, "", f"cannot start: {e}"


def why(rc, out: str, err: str) -> str:
    return f"rc={rc}" + core.describe_output(out, err)


# ---------------------------------------------------------------- P4
def make_image(path: Path, mib: int) -> None:
    """A fully allocated raw image (no holes, so reads touch real data)."""
    if path.exists() and path.stat().st_size == mib << 20:
        return
    chunk = bytes((i * 7 + 3) & 0xFF for i in range(1 << 20))
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def fio(args, image: Path) -> dict[str, float] | str:
    secs = args.seconds
    common = ["--filename", str(image), "--ioengine", args.fio_engine, f"--direct={1 if args.direct else 0}",
              "--time_based", f"--runtime={secs}", "--output-format=json", "--group_reporting",
              "--invalidate=0"]   # keep the page cache: the VMMs read through it too
    jobs = {
        "randread4k": ["--name=randread4k", "--rw=randread", "--bs=4k", f"--iodepth={args.qd}"],
        "seqread1m": ["--name=seqread1m", "--rw=read", "--bs=1M", f"--iodepth={args.seq_qd}"],
        "seqwrite1m": ["--name=seqwrite1m", "--rw=write", "--bs=1M", f"--iodepth={args.seq_qd}"],
    }
    out: dict[str, float] = {}
    for name, j in jobs.items():
        rc, so, se = run(["fio"] + j + common, secs + 60)
        if rc != 0:
            return f"fio {name}: " + why(rc, so, se)
        try:
            job = json.loads(so[so.index("{"):])["jobs"][0]
        except (ValueError, KeyError, IndexError) as e:
            return f"fio {name}: unreadable JSON ({e})"
        side = job["write"] if "write" in name else job["read"]
        out[f"{name}_iops"] = side["iops"]
        out[f"{name}_mb_s"] = side["bw_bytes"] / 1e6
    return out


def p4(args, vmms: list[VMM], results: dict, commands: dict, notes: list[str]) -> None:
    image = Path(args.image)
    log(f"P4: image {image} ({args.image_mib} MiB)")
    make_image(image, args.image_mib)
    warm(image)
    elf = Path(args.kit) / "blk-bench.elf"
    ms = int(args.seconds * 1000)
    base = f"rand_ms={ms} seq_ms={ms} qd={args.qd} seq_qd={args.seq_qd}" + (f" tsc_hz={args.tsc_hz}" if args.tsc_hz else "")
    variants = [("", base)] if args.event_idx == "on" else [(" event_idx=0", base + " event_idx=0")] \
        if args.event_idx == "off" else [("", base), (" event_idx=0", base + " event_idx=0")]
    for v in vmms:
        for tag, cmd in variants:
            commands[f"P4 {v.label}{tag}"] = shown(v.argv(elf, cmd, disk=image))
    if not args.no_fio:
        commands["P4 host fio"] = (f"fio --filename {image} --ioengine {args.fio_engine} --direct={1 if args.direct else 0} "
                                   f"--time_based --runtime={args.seconds} --invalidate=0 --name=randread4k --rw=randread --bs=4k "
                                   f"--iodepth={args.qd}   (and --rw=read/--rw=write --bs=1M --iodepth={args.seq_qd})")
    for rnd in range(args.runs):
        order = vmms[rnd % len(vmms):] + vmms[:rnd % len(vmms)]
        for v in order:
            for tag, cmd in variants:
                key = f"{v.label}{tag}"
                rc, out, err = run(v.argv(elf, cmd, disk=image), args.timeout)
                if rc != 0 or "KIT blk-bench PASS" not in out:
                    log(f"  P4 round {rnd} {key}: FAILED {why(rc, out, err)}")
                    results.setdefault(key, {}).setdefault("failures", []).append(why(rc, out, err))
                    continue
                vals = {}
                for m in BLK_PAT.finditer(out):
                    vals[f"{m[1]}_iops"] = float(m[2])
                    vals[f"{m[1]}_mb_s"] = float(m[3])
                    vals[f"{m[1]}_kicks_per_io"] = int(m[6]) / max(1, int(m[4]))
                t = TSC_PAT.search(out)
                if t:
                    vals["tsc"] = t[2]
                log(f"  P4 round {rnd} {key}: " + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                                          for k, v in vals.items()))
                for k, val in vals.items():
                    results.setdefault(key, {}).setdefault(k, []).append(val)
        if not args.no_fio and shutil.which("fio"):
            f = fio(args, image)
            if isinstance(f, str):
                log(f"  P4 round {rnd} host fio: FAILED {f}")
                notes.append(f)
            else:
                log(f"  P4 round {rnd} host fio: " + " ".join(f"{k}={v:.1f}" for k, v in f.items()))
                for k, val in f.items():
                    results.setdefault("host fio", {}).setdefault(k, []).append(val)
        elif not args.no_fio:
            notes.append("fio not installed (SWIFTLET_WITH_BENCHMARKS=1 scripts/install-deps)")


# ---------------------------------------------------------------- Q4
def q4(args, vmms: list[VMM], results: dict, commands: dict, notes: list[str]) -> None:
    base = Path(args.image)
    make_image(base, args.image_mib)
    warm(base)
    overlay = base.with_suffix(".overlay.qcow2")
    elf = Path(args.kit) / "blk-bench.elf"
    ms = int(args.seconds * 1000)
    cmd = f"rand_ms={ms} seq_ms={ms} qd={args.qd} seq_qd={args.seq_qd} randwrite=1" + \
        (f" tsc_hz={args.tsc_hz}" if args.tsc_hz else "")
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay)]
    runs = [(f"{v.label} qcow2 overlay", v, overlay, "qcow2") for v in vmms if v.transport == "pci"]
    runs += [("Swiftlet raw", v, base, "raw") for v in vmms if v.name == "swiftlet" and v.transport == "pci"]
    for key, v, disk, fmt in runs:
        commands[f"Q4 {key}"] = shown(v.argv(elf, cmd, disk=disk, disk_format=fmt))
    commands["Q4 overlay"] = shown(create)
    for rnd in range(args.runs):
        order = runs[rnd % len(runs):] + runs[:rnd % len(runs)]
        for key, v, disk, fmt in order:
            if fmt == "qcow2":
                overlay.unlink(missing_ok=True)
                subprocess.run(create, check=True)
            rc, out, err = run(v.argv(elf, cmd, disk=disk, disk_format=fmt), args.timeout)
            if rc != 0 or "KIT blk-bench PASS" not in out:
                log(f"  Q4 round {rnd} {key}: FAILED {why(rc, out, err)}")
                results.setdefault(key, {}).setdefault("failures", []).append(why(rc, out, err))
                continue
            vals = {f"{m[1]}_iops": float(m[2]) for m in BLK_PAT.finditer(out)}
            vals.update({f"{m[1]}_mb_s": float(m[3]) for m in BLK_PAT.finditer(out)})
            log(f"  Q4 round {rnd} {key}: " + " ".join(f"{k}={val:.1f}" for k, val in vals.items()))
            for k, val in vals.items():
                results.setdefault(key, {}).setdefault(k, []).append(val)
            if fmt == "qcow2":
                check = subprocess.run(["qemu-img", "check", "-q", str(overlay)], capture_output=True, text=True)
                if check.returncode != 0:
                    notes.append(f"round {rnd} {key}: qemu-img check failed: {check.stdout}{check.stderr}")
    overlay.unlink(missing_ok=True)


# ---------------------------------------------------------------- P5
class Netns:
    def __init__(self, name: str, tap: str):
        self.name, self.tap = name, tap

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        for c in (["ip", "link", "set", "lo", "up"], ["ip", "tuntap", "add", "dev", self.tap, "mode", "tap"],
                  ["ip", "link", "set", self.tap, "up"]):
            subprocess.run(["ip", "netns", "exec", self.name] + c, check=True)
        return self

    def __exit__(self, *exc):
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name] + argv


def p5(args, vmms: list[VMM], results: dict, commands: dict, notes: list[str]) -> None:
    elf = Path(args.kit) / "net-bench.elf"
    ms = int(args.seconds * 1000)
    base = f"tx_ms={ms}" + (f" tsc_hz={args.tsc_hz}" if args.tsc_hz else "")
    variants = [("", base)] if args.event_idx == "on" else [(" event_idx=0", base + " event_idx=0")] \
        if args.event_idx == "off" else [("", base), (" event_idx=0", base + " event_idx=0")]
    ns_name, tap = f"kitbench{os.getpid()}", "kb0"
    peer = [sys.executable, str(HERE / "kit-net-peer.py"), "bench", "--iface", tap, "--rx-seconds",
            str(args.seconds), "--timeout", str(args.timeout)]
    log(f"P5: netns {ns_name}, tap {tap}")
    with Netns(ns_name, tap) as ns:
        for v in vmms:
            for tag, cmd in variants:
                commands[f"P5 {v.label}{tag}"] = shown(ns.wrap(v.argv(elf, cmd, tap=tap)))
        commands["P5 host peer"] = shown(ns.wrap(peer))
        for rnd in range(args.runs):
            order = vmms[rnd % len(vmms):] + vmms[:rnd % len(vmms)]
            for v in order:
                for tag, cmd in variants:
                    key = f"{v.label}{tag}"
                    with tempfile.TemporaryFile() as pout:
                        pp = subprocess.Popen(ns.wrap(peer), stdout=pout, stderr=subprocess.STDOUT)
                        time.sleep(0.3)             # the peer binds its socket first
                        rc, out, err = run(ns.wrap(v.argv(elf, cmd, tap=tap)), args.timeout)
                        try:
                            pp.wait(timeout=args.seconds + 15)
                        except subprocess.TimeoutExpired:
                            pp.kill()
                            pp.wait()
                        pout.seek(0)
                        ptext = core.clean(pout.read())
                    if rc != 0 or "KIT net-bench PASS" not in out:
                        log(f"  P5 round {rnd} {key}: FAILED {why(rc, out, err)} peer: {core.excerpt(ptext)}")
                        results.setdefault(key, {}).setdefault("failures", []).append(why(rc, out, err))
                        continue
                    vals = {}
                    for m in NET_PAT.finditer(out):
                        vals[f"{m[1]}_pps"] = float(m[5])
                        vals[f"{m[1]}_mbit_s"] = float(m[6])
                        k = re.search(r"kicks=(\d+)", m[7])
                        if k:
                            vals[f"{m[1]}_kicks_per_frame"] = int(k[1]) / max(1, int(m[2]))
                        lost = re.search(r"lost=(\d+)", m[7])
                        if lost:
                            vals["rx_lost"] = float(lost[1])
                    try:
                        pj = json.loads(ptext.strip().splitlines()[-1])
                        vals["host_rx_frames"] = float(pj["host_rx"]["frames"])
                        vals["host_tx_frames"] = float(pj["host_tx"]["frames"])
                    except (ValueError, KeyError, IndexError, TypeError):
                        pass
                    log(f"  P5 round {rnd} {key}: " + " ".join(f"{k}={val:.1f}" for k, val in vals.items()))
                    for k, val in vals.items():
                        results.setdefault(key, {}).setdefault(k, []).append(val)


# ---------------------------------------------------------------- report
def med(vals: list | None) -> float | None:
    vals = [v for v in (vals or []) if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def table(results: dict, metrics: list[tuple[str, str, int]], rows: list[str], ratio_base: str | None,
          host: str | None = None) -> str:
    head = "| | " + " | ".join(m[1] for m in metrics) + " |"
    lines = [head, "|---|" + "---|" * len(metrics)]
    for r in rows:
        if r not in results:
            continue
        cells = []
        for m in metrics:
            vals = [v for v in results[r].get(m[0], []) if isinstance(v, (int, float))]
            c = fmt(med(vals), m[2])
            if len(vals) > 1:
                c += f" ({fmt(min(vals), m[2])}–{fmt(max(vals), m[2])})"
            cells.append(c)
        n = max((len(results[r].get(m[0], [])) for m in metrics), default=0)
        fails = len(results[r].get("failures", []))
        lines.append(f"| {r} (n={n}{f', {fails} failed' if fails else ''}) | " + " | ".join(cells) + " |")
    sw, q = "Swiftlet", "QEMU microvm"
    for a, b, label in ((sw, q, "Swiftlet / QEMU"), (sw, "host fio", "Swiftlet / host"),
                        (q, "host fio", "QEMU / host"), (f"{sw} virtio-mmio", sw, "virtio-mmio / virtio-pci")):
        if a in results and b in results and (b != "host fio" or host):
            cells = []
            for m in metrics:
                x, y = med(results[a].get(m[0])), med(results[b].get(m[0]))
                cells.append(f"{x / y:.2f}×" if x is not None and y else "—")
            lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def produced_by(args) -> str:
    a = ["python3", "benchmarks/virtio-bench.py", "--runs", str(args.runs), "--seconds", f"{args.seconds:g}",
         "--only", ",".join(args.only), "--vmms", args.vmms]
    if args.event_idx != "on":
        a += ["--event-idx", args.event_idx]
    if args.transports != "pci":
        a += ["--transports", args.transports]
    return f"Produced by: `{' '.join(a)}`"


def missing(results: dict, prefix: str) -> list[str]:
    return [f"* {label}: no results in this run (binary missing, not selected, or every run failed)."
            for label in LABELS.values() if not any(k.startswith(label) for k in results)]


def report(args, machine: dict, results: dict, commands: dict, notes: dict) -> dict[str, str]:
    out = {}
    rows4 = [f"{v}{t}" for v in ("Swiftlet", "Swiftlet virtio-mmio", "QEMU microvm") for t in ("", " event_idx=0")] + ["host fio"]
    if "P4" in args.only:
        m4 = [("randread4k_iops", "randread 4K QD32 IOPS", 0), ("randread4k_mb_s", "MB/s", 1),
              ("seqread1m_mb_s", "seqread 1M MB/s", 0), ("seqwrite1m_mb_s", "seqwrite 1M MB/s", 0),
              ("randread4k_kicks_per_io", "notifies / 4K read", 3)]
        body = [table(results, m4, rows4, "QEMU microvm", host="host fio"), "",
                f"Medians (min–max) of {args.runs} interleaved rounds, {args.seconds:g} s per phase, "
                f"{args.image_mib} MiB raw image (in the page cache; "
                f"{'O_DIRECT' if args.direct else 'buffered'} fio with {args.fio_engine}), "
                f"{args.memory} MiB guest, 1 vCPU. Goal: Swiftlet ≥ 1.2× QEMU IOPS and ≥ 0.7× host fio.",
                f"Machine: {machine.get('cpu')}, {machine.get('nproc')} CPUs, {machine.get('kvm_modules')}, "
                f"load {' '.join(machine.get('loadavg_start', []))} at the start; guest TSC rate "
                f"{args.tsc_hz or 'calibrated by the guest'}.", "", "Commands:", ""]
        body += [f"    # {k}\n    {c}" for k, c in commands.items() if k.startswith("P4")]
        body += [""] + [f"* {n}" for n in notes.get("P4", [])] + missing(results, "P4") + ["", produced_by(args)]
        out["P4"] = "\n".join(body).rstrip()
    if "Q4" in args.only:
        rows = ["Swiftlet qcow2 overlay", "QEMU microvm qcow2 overlay", "Swiftlet raw"]
        mq = [("randread4k_iops", "randread 4K QD32 IOPS", 0), ("randwrite4k_iops", "randwrite 4K QD32 IOPS", 0),
              ("seqread1m_mb_s", "seqread 1M MB/s", 0), ("seqwrite1m_mb_s", "seqwrite 1M MB/s", 0)]
        lines = [table(results, mq, rows, None)]
        for a, b, label in (("Swiftlet qcow2 overlay", "QEMU microvm qcow2 overlay", "Swiftlet / QEMU (qcow2)"),
                            ("Swiftlet qcow2 overlay", "Swiftlet raw", "Swiftlet qcow2 / raw")):
            if a in results and b in results:
                cells = []
                for m in mq:
                    x, y = med(results[a].get(m[0])), med(results[b].get(m[0]))
                    cells.append(f"{x / y:.2f}×" if x is not None and y else "—")
                lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
        body = ["\n".join(lines), "",
                f"Medians (min–max) of {args.runs} interleaved rounds, {args.seconds:g} s per phase, a fresh qcow2 "
                f"overlay (64 KiB clusters, made by qemu-img) on the {args.image_mib} MiB raw image for every run: "
                "reads of clusters not yet written go to the backing file; writes allocate. The phases run "
                "randread, seqread, seqwrite, then randwrite. "
                f"{args.memory} MiB guest, 1 vCPU. Goal: Swiftlet's qcow2 ≥ 1.0× QEMU's and ≥ 0.8× Swiftlet raw.",
                f"Machine: {machine.get('cpu')}, {machine.get('nproc')} CPUs, load "
                f"{' '.join(machine.get('loadavg_start', []))} at the start.", "", "Commands:", ""]
        body += [f"    # {k}\n    {c}" for k, c in commands.items() if k.startswith("Q4")]
        body += [""] + [f"* {n}" for n in notes.get("Q4", [])] + ["", produced_by(args)]
        out["Q4"] = "\n".join(body).rstrip()
    if "P5" in args.only:
        rows5 = [f"{v}{t}" for v in ("Swiftlet", "Swiftlet virtio-mmio", "QEMU microvm") for t in ("", " event_idx=0")]
        m5 = [("tx_mbit_s", "TX guest→host Mbit/s", 0), ("tx_pps", "TX frames/s", 0),
              ("rx_mbit_s", "RX host→guest Mbit/s", 0), ("rx_pps", "RX frames/s", 0),
              ("tx_kicks_per_frame", "notifies / TX frame", 3)]
        body = [table(results, m5, rows5, "QEMU microvm"), "",
                f"Medians (min–max) of {args.runs} interleaved rounds, {args.seconds:g} s per direction, 1514-byte frames, "
                "counted by the guest (TX: frames the device completed; RX: frames received, between the first "
                "and the last). The host peer (Python, AF_PACKET) sends as fast as it can, 64 frames per sendmmsg(2) so that the VMM, not the peer, bounds RX; frames the VMM does "
                "not read in time are dropped by the tap and do not count. Goal: Swiftlet ≥ 1.0× QEMU.",
                "", "Commands:", ""]
        body += [f"    # {k}\n    {c}" for k, c in commands.items() if k.startswith("P5")]
        body += [""] + [f"* {n}" for n in notes.get("P5", [])] + missing(results, "P5") + ["", produced_by(args)]
        out["P5"] = "\n".join(body).rstrip()
    return out


def write_sections(path: Path, sections: dict[str, str]) -> None:
    doc = path.read_text() if path.exists() else "# Swiftlet benchmarks\n"
    for key, body in sections.items():
        begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
        pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        block = f"{begin}\n{body.rstrip()}\n{end}"
        doc = pat.sub(lambda _: block, doc, count=1) if pat.search(doc) \
            else doc.rstrip() + f"\n\n## {TITLES[key]}\n\n{block}\n"
    path.write_text(doc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--only", default="P4,P5", help="P4, P5, Q4 (qcow2), comma-separated (default P4,P5)")
    ap.add_argument("--vmms", default="swiftlet,qemu", help="VMMs to run (default swiftlet,qemu)")
    ap.add_argument("--swiftlet", default=None,
                    help="swiftlet-vmm binary (default .build/release/swiftlet-vmm)")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--qemu-machine", default="microvm,pcie=on,acpi=on")
    ap.add_argument("--qemu-cpu", default="host,-arch-capabilities")
    ap.add_argument("--kit", default=str(REPO / "guest-kit/build"))
    ap.add_argument("--memory", type=int, default=256, help="guest MiB (default 256)")
    ap.add_argument("--seconds", type=float, default=3, help="seconds per phase (default 3)")
    ap.add_argument("--qd", type=int, default=32, help="P4 random-read queue depth (default 32)")
    ap.add_argument("--seq-qd", type=int, default=4, help="P4 sequential requests in flight (default 4)")
    ap.add_argument("--image", default=str(Path(tempfile.gettempdir()) / "swiftlet-virtio-bench.img"))
    ap.add_argument("--image-mib", type=int, default=512)
    ap.add_argument("--direct", action="store_true", help="fio with O_DIRECT (the VMMs stay as they are)")
    ap.add_argument("--no-fio", action="store_true")
    ap.add_argument("--fio-engine", default="io_uring",
                    help="fio ioengine (default io_uring: buffered libaio is synchronous, so queue depth is lost)")
    ap.add_argument("--event-idx", choices=("on", "off", "both"), default="on")
    ap.add_argument("--transports", default="pci",
                    help="Swiftlet's virtio transports, comma-separated: pci (default), mmio or pci,mmio")
    ap.add_argument("--tsc-hz", type=int, default=None,
                    help="guest TSC rate passed as tsc_hz= (default: host /proc/cpuinfo; 0: let the guest calibrate)")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--write", nargs="?", const=str(REPO / "BENCHMARKS.md"), metavar="FILE")
    ap.add_argument("--json", metavar="FILE", help="also write the parsed results as JSON")
    ap.add_argument("--from-json", metavar="FILE",
                    help="no runs: report (and --write) the results of an earlier --json (its --runs, --seconds, ... are in it; for older files, give the same ones)")
    args = ap.parse_args()
    args.only = [b.strip().upper() for b in args.only.split(",") if b.strip()]
    if args.tsc_hz is None:
        mhz = core.tsc_mhz()
        args.tsc_hz = int(mhz * 1e6) if mhz else 0
    if args.swiftlet is None:
        # Only the release build: a debug build's data plane is several times
        # slower, and its numbers would be published as Swiftlet's.
        release = REPO / ".build/release/swiftlet-vmm"
        if "swiftlet" in args.vmms and not args.from_json and not os.access(release, os.X_OK):
            log(f"virtio-bench: {release} is missing: swift build -c release --product swiftlet-vmm "
                "(or name a binary with --swiftlet)")
            return 2
        args.swiftlet = str(release)
    binaries = {"swiftlet": args.swiftlet, "qemu": args.qemu}
    vmms = []
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if not transports or any(t not in ("pci", "mmio") for t in transports):
        log(f"virtio-bench: --transports {args.transports}: expected pci, mmio or pci,mmio")
        return 2
    for name in args.vmms.split(","):
        for transport in transports if name.strip() == "swiftlet" else ["pci"]:
            v = VMM(name.strip(), binaries[name.strip()], args, transport)
            if v.resolved() or args.from_json:
                vmms.append(v)
            else:
                log(f"virtio-bench: {v.label} binary {v.binary} not found: skipped")
    for prog in ("blk-bench", "net-bench") if not args.from_json else ():
        if not (Path(args.kit) / f"{prog}.elf").exists():
            log(f"virtio-bench: {args.kit}/{prog}.elf missing (make -C guest-kit)")
            return 2
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        machine, results, commands = saved["machine"], saved["results"], saved["commands"]
        for k, val in saved.get("args", {}).items():   # the saved run's options, for the report's text
            if k not in ("only", "write", "json", "from_json"):
                setattr(args, k, val)
        notes = saved.get("notes", {"P4": [], "P5": [], "Q4": []})
    else:
        machine = core.machine_info(argparse.Namespace(qemu=args.qemu))
        results, commands = {}, {}
        notes = {"P4": [], "P5": [], "Q4": []}
        if "P4" in args.only:
            p4(args, vmms, results, commands, notes["P4"])
        if "Q4" in args.only:
            q4(args, vmms, results, commands, notes["Q4"])
        if "P5" in args.only:
            p5(args, vmms, results, commands, notes["P5"])
    sections = report(args, machine, results, commands, notes)
    for key, body in sections.items():
        print(f"## {TITLES[key]}\n\n{body}\n")
    if args.write:
        write_sections(Path(args.write), sections)
        log(f"virtio-bench: wrote {', '.join(sections)} to {args.write}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results, "commands": commands,
                                               "notes": notes, "args": vars(args)}, indent=1))
    failed = any(r.get("failures") for r in results.values())
    return 1 if failed or not vmms else 0


if __name__ == "__main__":
    sys.exit(main())
