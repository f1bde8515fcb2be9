#!/usr/bin/env python3
"""Swiftlet benchmarks: Swiftlet vs QEMU microvm vs the C floor VMM.

    python3 benchmarks/bench.py [--runs 5] [--only P1,P2,P3] [--write]

P1  wall time from process start to exit, booting the kit's hello.elf to
    ACPI power-off (output must contain "KIT hello PASS").
P2  VMM resident memory excluding guest RAM (128 MiB guest), sampled from
    /proc/PID/smaps while exitloop.elf runs a long loop.
P3  exits per second: exitloop.elf (ring-3 `outb` to port 0x80) with
    iterations=BASE and iterations=N; rate = (N - BASE) / (t_N - t_BASE).

Runs are interleaved: every round runs each VMM once (the starting VMM
rotates from round to round), so slow drifts in host load hit all VMMs alike.
Every run has a timeout; failures are reported with their exit status and the
tail of their output, never dropped silently. Python 3.11 standard library only.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHES = ("P1", "P2", "P3")
VMM_NAMES = ("swiftlet", "qemu", "floor")
LABELS = {"swiftlet": "Swiftlet", "qemu": "QEMU microvm", "floor": "floor (C)"}
P2_GOAL_MIB = 4.5   # VMM memory excluding guest RAM (was 5, Firecracker's bound)


# ---------------------------------------------------------------- VMMs
@dataclasses.dataclass
class VMM:
    name: str
    binary: str
    qemu_machine: str = "microvm,acpi=on"
    qemu_cpu: str = "host,-arch-capabilities"

    @property
    def label(self) -> str:
        return LABELS[self.name]

    def resolved(self) -> str | None:
        """Absolute path of the binary, or None if it cannot be run."""
        if os.sep in self.binary:
            p = Path(self.binary)
            return str(p) if p.is_file() and os.access(p, os.X_OK) else None
        return shutil.which(self.binary)

    def argv(self, elf: Path, cmdline: str, mem_mib: int) -> list[str]:
        exe = self.resolved() or self.binary
        if self.name == "swiftlet":
            a = [exe, "--kernel", str(elf), "--cpus", "1", "--memory", f"{mem_mib}M", "--serial", "stdio"]
            return a + (["--cmdline", cmdline] if cmdline else [])
        if self.name == "floor":
            a = [exe, "--kernel", str(elf), "--memory", str(mem_mib)]
            return a + (["--cmdline", cmdline] if cmdline else [])
        a = [exe, "-M", self.qemu_machine, "-accel", "kvm", "-cpu", self.qemu_cpu,
             "-m", f"{mem_mib}M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
             "-serial", "stdio", "-no-reboot", "-kernel", str(elf)]
        return a + (["-append", cmdline] if cmdline else [])


# ---------------------------------------------------------------- runs
@dataclasses.dataclass
class Run:
    bench: str
    vmm: str
    round: int
    argv: list[str]
    ok: bool = False
    error: str = ""
    wall_s: float | None = None
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    values: dict = dataclasses.field(default_factory=dict)

    def fail(self, why: str) -> "Run":
        self.ok = False
        self.error = why + describe_output(self.stdout, self.stderr)
        return self


def clean(b: bytes) -> str:
    return b.decode("utf-8", "replace").replace("\r", "")


def excerpt(text: str, head: int = 2, last: int = 1, chars: int = 240) -> str:
    """First `head` lines and the last `last` lines, joined with ' / '."""
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    if len(lines) > head + last:
        lines = lines[:head] + ["…"] + lines[-last:]
    t = " / ".join(lines)
    return t if len(t) <= chars else t[:chars] + "…"


def describe_output(stdout: str, stderr: str) -> str:
    parts = []
    if stderr.strip():
        parts.append(f"stderr: \"{excerpt(stderr)}\"")
    if stdout.strip():
        parts.append(f"last output: \"{excerpt(stdout, 0, 2)}\"")
    else:
        parts.append("no guest output")
    return "; " + "; ".join(parts)


def run_to_exit(run: Run, timeout: float, marker: str) -> Run:
    """Runs argv to completion; wall time is Popen() to wait() returning."""
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(run.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    except OSError as e:
        return run.fail(f"cannot start: {e}")
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        p.kill()
        out, err = p.communicate()
    t1 = time.perf_counter()
    run.rc, run.stdout, run.stderr = p.returncode, clean(out), clean(err)
    if timed_out:
        return run.fail(f"timed out after {timeout:g} s (killed)")
    run.wall_s = t1 - t0
    if p.returncode != 0:
        return run.fail(f"exit status {p.returncode}")
    if marker not in run.stdout:
        return run.fail(f"exit status 0 but {marker!r} missing from the output")
    run.ok = True
    return run


# ---------------------------------------------------------------- smaps
HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d+)\s*(.*)$")
FIELD = re.compile(r"^(\w+):\s+(\d+) kB$")


def parse_smaps(text: str) -> list[dict]:
    maps: list[dict] = []
    for line in text.splitlines():
        h = HEADER.match(line)
        if h:
            maps.append({"range": f"{h[1]}-{h[2]}", "perms": h[3], "inode": int(h[6]),
                         "path": h[7].strip(), "kB": {}})
            continue
        f = FIELD.match(line)
        if f and maps:
            maps[-1]["kB"][f[1]] = int(f[2])
    return maps


def is_anonymous(m: dict) -> bool:
    p = m["path"]
    return m["inode"] == 0 and (p == "" or p.startswith("[anon") or p.startswith("/memfd:")) \
        or p.startswith("/memfd:")


def guest_ram_mapping(maps: list[dict], guest_kb: int) -> dict | None:
    """The guest-RAM rule: the largest anonymous (or memfd) mapping whose
    size is at least the guest RAM size. Exactly one mapping is excluded."""
    cands = [m for m in maps if is_anonymous(m) and m["kB"].get("Size", 0) >= guest_kb]
    return max(cands, key=lambda m: m["kB"]["Size"], default=None)


def sample_memory(run: Run, timeout: float, delay: float, guest_kb: int, boot_marker: str) -> Run:
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        try:
            p = subprocess.Popen(run.argv, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f)
        except OSError as e:
            return run.fail(f"cannot start: {e}")

        def output() -> tuple[str, str]:
            out_f.seek(0)
            err_f.seek(0)
            return clean(out_f.read()), clean(err_f.read())

        try:
            t0 = time.perf_counter()
            deadline = t0 + timeout
            smaps = None
            while True:
                time.sleep(0.05)
                if p.poll() is not None:
                    run.rc = p.returncode
                    run.stdout, run.stderr = output()
                    return run.fail(f"exited (status {p.returncode}) after "
                                    f"{time.perf_counter() - t0:.2f} s, before the sample")
                now = time.perf_counter()
                if now - t0 >= delay and boot_marker in output()[0]:
                    try:
                        smaps = Path(f"/proc/{p.pid}/smaps").read_text()
                    except OSError as e:
                        return run.fail(f"cannot read /proc/{p.pid}/smaps: {e}")
                    run.values["sampled_after_s"] = round(now - t0, 3)
                    break
                if now >= deadline:
                    run.stdout, run.stderr = output()
                    return run.fail(f"guest did not print {boot_marker!r} within {timeout:g} s")
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
        run.stdout, run.stderr = output()
    maps = parse_smaps(smaps)
    total = sum(m["kB"].get("Rss", 0) for m in maps)
    guest = guest_ram_mapping(maps, guest_kb)
    if guest is None:
        run.values["total_rss_mib"] = total / 1024
        return run.fail(f"no anonymous mapping of >= {guest_kb} kB (guest RAM) found")
    others = [m for m in maps if m is not guest]
    rest = sum(m["kB"].get("Rss", 0) for m in others)
    private = sum(m["kB"].get("Private_Clean", 0) + m["kB"].get("Private_Dirty", 0) for m in others)
    run.values.update({
        "rss_excl_guest_mib": rest / 1024,
        "private_excl_guest_mib": private / 1024,
        "total_rss_mib": total / 1024,
        "guest_mapping": f"{guest['range']} size={guest['kB']['Size']} kB rss={guest['kB'].get('Rss', 0)} kB",
        "guest_rss_mib": guest["kB"].get("Rss", 0) / 1024,
        "mappings": len(maps),
    })
    run.ok = True
    return run


# ---------------------------------------------------------------- machine
def machine_info(args) -> dict:
    def first(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"
    mods = [m for m in ("kvm_pvm", "kvm_intel", "kvm_amd") if Path(f"/sys/module/{m}").exists()]
    qemu = "not found"
    q = VMM("qemu", args.qemu).resolved()
    if q:
        try:
            qemu = subprocess.run([q, "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            qemu = "?"
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": first("/proc/cpuinfo", "model name"),
        "cpu_mhz": first("/proc/cpuinfo", "cpu MHz"),
        "kernel": platform.release(),
        "kvm_modules": ", ".join(mods) or "none found",
        "memory": first("/proc/meminfo", "MemTotal"),
        "qemu": qemu,
        "python": platform.python_version(),
        "repo_commit": commit,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "host_is_vm": " hypervisor " in f" {first('/proc/cpuinfo', 'flags')} ",
    }


def tsc_mhz() -> float | None:
    """Host TSC rate, from /proc/cpuinfo when the TSC is constant and known."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = re.search(r"^flags\s*:(.*)$", text, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
    if flags and mhz and "constant_tsc" in flags[1].split():
        return float(mhz[1])
    return None


class DeviceNamespace:
    """A network namespace holding one tap, for P2's all-devices run (the
    NIC's tap never sees traffic: exitloop sends nothing)."""

    def __init__(self):
        self.name = f"p2bench{os.getpid()}"
        self.tap = "p2tap0"

    def __enter__(self) -> "DeviceNamespace":
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        for c in (["ip", "tuntap", "add", "dev", self.tap, "mode", "tap"], ["ip", "link", "set", self.tap, "up"]):
            subprocess.run(["ip", "netns", "exec", self.name] + c, check=True)
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name] + argv


# ---------------------------------------------------------------- bench loop
class Bench:
    def __init__(self, args, vmms: list[VMM]):
        self.args = args
        self.vmms = vmms
        self.kit = Path(args.kit)
        self.runs: list[Run] = []
        self.notes: dict[str, list[str]] = {b: [] for b in BENCHES}
        self.commands: dict[str, dict[str, str]] = {b: {} for b in BENCHES}
        self.skipped: list[VMM] = []            # binary missing: not run at all
        self.skip_reason: dict[str, str] = {}

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def order(self, rnd: int) -> list[VMM]:
        k = rnd % len(self.vmms)
        return self.vmms[k:] + self.vmms[:k]

    def elf(self, name: str) -> Path:
        return self.kit / f"{name}.elf"

    def record(self, run: Run, label: str = "") -> Run:
        self.runs.append(run)
        if run.ok:
            extra = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in run.values.items() if k != "guest_mapping")
            wall = f"{run.wall_s * 1000:.1f} ms" if run.wall_s is not None else ""
            self.log(f"  {run.bench} round {run.round} {run.vmm:8} {label}ok {wall} {extra}".rstrip())
        else:
            self.log(f"  {run.bench} round {run.round} {run.vmm:8} {label}FAILED: {run.error}")
        return run

    def loop(self, bench: str, body) -> None:
        """Round-robin: each round runs body(vmm, round) for every VMM. A VMM
        whose first `--max-failures` runs all fail is not run again."""
        streak = {v.name: 0 for v in self.vmms}
        given_up: set[str] = set()
        for rnd in range(-self.args.warmup, self.args.runs):
            for v in self.order(max(rnd, 0)):
                if v.name in given_up:
                    continue
                ok = body(v, rnd)
                if rnd < 0:
                    continue
                streak[v.name] = 0 if ok else streak[v.name] + 1
                if streak[v.name] >= self.args.max_failures and rnd + 1 == streak[v.name]:
                    given_up.add(v.name)
                    self.notes[bench].append(
                        f"{v.label}: stopped after its first {streak[v.name]} runs all failed.")

    def p1(self) -> None:
        elf = self.elf("hello")
        self.log(f"P1: boot-to-exit of {elf}")
        for v in self.vmms:
            self.commands["P1"][v.name] = shlex.join(v.argv(elf, "", self.args.memory))

        def body(v: VMM, rnd: int) -> bool:
            r = run_to_exit(Run("P1", v.name, rnd, v.argv(elf, "", self.args.memory)),
                            self.args.timeout, "KIT hello PASS")
            if rnd < 0:
                if not r.ok:
                    self.log(f"  P1 warm-up {v.name} FAILED: {r.error}")
                return r.ok
            return self.record(r).ok
        self.loop("P1", body)

    def p2(self) -> None:
        elf = self.elf("exitloop")
        cmd = f"iterations={self.args.rss_iterations}"
        guest_kb = self.args.memory * 1024
        self.log(f"P2: RSS of a running VMM ({elf} {cmd}, {self.args.memory} MiB guest)")
        for v in self.vmms:
            self.commands["P2"][v.name] = shlex.join(v.argv(elf, cmd, self.args.memory))

        with tempfile.TemporaryDirectory(prefix="p2dev") as scratch, DeviceNamespace() as ns:
            disk = Path(scratch) / "disk.raw"
            with open(disk, "wb") as f:
                f.truncate(16 << 20)

            def devices_argv(v: VMM, rnd: int) -> list[str]:
                """Swiftlet with every device the goal names: a disk, a NIC
                on a tap (inside a namespace of its own), rng, vsock, API."""
                return ns.wrap(v.argv(elf, cmd, self.args.memory) + [
                    "--disk", f"path={disk}", "--net", f"tap={ns.tap}", "--rng",
                    "--vsock", f"cid=3,uds={scratch}/vsock{rnd}.sock", "--api-sock", f"{scratch}/api{rnd}.sock"])

            for v in self.vmms:
                if v.name == "swiftlet":
                    self.commands["P2"]["swiftlet-devices"] = shlex.join(devices_argv(v, 0))

            def body(v: VMM, rnd: int) -> bool:
                if rnd < 0:
                    return True
                r = sample_memory(Run("P2", v.name, rnd, v.argv(elf, cmd, self.args.memory)),
                                  self.args.timeout, self.args.rss_delay, guest_kb, "KIT exitloop boot")
                if v.name == "swiftlet" and r.ok:
                    d = sample_memory(Run("P2", v.name, rnd, devices_argv(v, rnd)),
                                      self.args.timeout, self.args.rss_delay, guest_kb, "KIT exitloop boot")
                    if d.ok:
                        r.values["devices_rss_excl_guest_mib"] = d.values["rss_excl_guest_mib"]
                    else:
                        self.notes["P2"].append(f"Swiftlet with devices, round {rnd}: {d.error}")
                return self.record(r).ok
            self.loop("P2", body)

    def p3(self) -> None:
        elf = self.elf("exitloop")
        base, n = self.args.exit_base, self.args.exit_iterations
        self.log(f"P3: exit rate ({elf} iterations={base} and iterations={n})")
        for v in self.vmms:
            self.commands["P3"][v.name] = shlex.join(v.argv(elf, f"iterations={n}", self.args.memory)) \
                + f"   (and iterations={base})"
        pat = re.compile(r"KIT exitloop iterations=(\d+) cycles=(\d+)(?: cycles_per_exit=(\d+))?")

        def one(v: VMM, rnd: int, iters: int) -> Run:
            r = Run("P3", v.name, rnd, v.argv(elf, f"iterations={iters}", self.args.memory),
                    values={"iterations": iters})
            r = run_to_exit(r, self.args.timeout, "KIT exitloop PASS")
            if r.ok:
                m = pat.search(r.stdout)
                if not m:
                    r.fail("no 'KIT exitloop iterations=N cycles=C' line")
                elif int(m[1]) != iters:
                    r.fail(f"guest ran iterations={m[1]}, not {iters} (command line not passed?)")
                else:
                    r.values["cycles"] = int(m[2])
            return r

        def body(v: VMM, rnd: int) -> bool:
            # Alternate which of the two runs goes first.
            pair = [base, n] if rnd % 2 == 0 else [n, base]
            rs = {}
            for iters in pair:
                rs[iters] = one(v, rnd, iters)
                if rnd >= 0:
                    self.record(rs[iters], f"iterations={iters} ")
                elif not rs[iters].ok:
                    self.log(f"  P3 warm-up {v.name} FAILED: {rs[iters].error}")
                if not rs[iters].ok:
                    break
            return all(r.ok for r in rs.values()) and len(rs) == 2
        self.loop("P3", body)


# ---------------------------------------------------------------- report
def fmt(x: float | None, unit: str = "", digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}{unit}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b in (None, 0) else f"{a / b:.2f}×"


def goal(label: str, value: float | None, limit: float, higher_is_better: bool) -> str:
    if value is None:
        return f"{label}: not measured (no successful Swiftlet runs or no reference)"
    ok = value >= limit if higher_is_better else value <= limit
    return f"{label}: {value:.2f}× — {'met' if ok else 'NOT met'}"


class Report:
    def __init__(self, bench: Bench, machine: dict):
        self.b = bench
        self.m = machine
        self.args = bench.args

    def ok_runs(self, name: str, vmm: str) -> list[Run]:
        return [r for r in self.b.runs if r.bench == name and r.vmm == vmm and r.ok]

    def all_runs(self, name: str, vmm: str) -> list[Run]:
        return [r for r in self.b.runs if r.bench == name and r.vmm == vmm]

    def failures(self, name: str) -> list[str]:
        """Failed runs, identical errors grouped: 'VMM rounds 0, 1: error'."""
        out = []
        for v in self.b.vmms:
            groups: dict[str, list[str]] = {}
            for r in self.all_runs(name, v.name):
                if not r.ok:
                    what = f"{r.round}" + (f" (iterations={r.values.get('iterations')})" if name == "P3" else "")
                    groups.setdefault(r.error, []).append(what)
            for err, rounds in groups.items():
                out.append(f"{v.label} round{'s' if len(rounds) > 1 else ''} {', '.join(rounds)}: {err}")
        return out

    def header(self) -> str:
        a = self.args
        return (f"_Measured {self.m['date']} at commit {self.m['repo_commit']}: {a.runs} interleaved "
                f"rounds, {a.warmup} warm-up round(s), timeout {a.timeout:g} s, "
                f"{a.memory} MiB guest, 1 vCPU. Host load average at start "
                f"{' '.join(self.m['loadavg_start'])}, at end {' '.join(self.m.get('loadavg_end', ['?']))}._")

    def tail_block(self, name: str) -> list[str]:
        lines = []
        notes = self.b.notes[name]
        fails = self.failures(name)
        if notes or fails:
            lines += ["", "Failures:", ""]
            lines += [f"- {n}" for n in notes]
            lines += [f"- {f.replace('|', '/')}" for f in fails]
        lines += ["", "Commands:", ""]
        for v in self.b.vmms:
            lines.append(f"- {v.label}: `{self.b.commands[name].get(v.name, '—')}`")
        if "swiftlet-devices" in self.b.commands[name]:
            lines.append(f"- Swiftlet with all devices: `{self.b.commands[name]['swiftlet-devices']}`")
        for v in self.b.skipped:
            lines.append(f"- {v.label}: not run — {self.b.skip_reason[v.name]}")
        return lines

    def summary(self, name: str, key) -> dict[str, tuple]:
        res = {}
        for v in self.b.vmms:
            vals = [key(r) for r in self.ok_runs(name, v.name)]
            vals = [x for x in vals if x is not None]
            res[v.name] = (statistics.median(vals), min(vals), max(vals)) if vals else (None, None, None)
        return res

    def rows(self, name: str, s: dict, unit: str, scale: float, digits: int, count) -> list[str]:
        q = s.get("qemu", (None,))[0]
        f = s.get("floor", (None,))[0]
        lines = [f"| VMM | ok runs | median | min | max | vs QEMU | vs floor |",
                 "|---|---|---|---|---|---|---|"]
        for v in self.b.vmms:
            med, lo, hi = s[v.name]
            sc = (lambda x: None if x is None else x * scale)
            lines.append(f"| {v.label} | {count(v.name)} | {fmt(sc(med), unit, digits)} | "
                         f"{fmt(sc(lo), unit, digits)} | {fmt(sc(hi), unit, digits)} | "
                         f"{ratio(med, q)} | {ratio(med, f)} |")
        for v in self.b.skipped:
            lines.append(f"| {v.label} | not run | — | — | — | — | — |")
        return lines

    def count_fn(self, name: str, per_round: int = 1):
        def count(vmm: str) -> str:
            rounds = {r.round for r in self.all_runs(name, vmm)}
            good = sum(1 for rnd in rounds
                       if sum(1 for r in self.all_runs(name, vmm) if r.round == rnd and r.ok) == per_round)
            return f"{good}/{self.args.runs}"
        return count

    def p1(self) -> str:
        s = self.summary("P1", lambda r: r.wall_s)
        sw, q, f = s.get("swiftlet", (None,))[0], s.get("qemu", (None,))[0], s.get("floor", (None,))[0]
        lines = [self.header(), "",
                 "Wall time from process start to exit, booting `hello.elf` to ACPI power-off "
                 "(output must contain `KIT hello PASS`). Lower is better.", ""]
        lines += self.rows("P1", s, " ms", 1000, 1, self.count_fn("P1"))
        lines += ["", "Goals for Swiftlet:", "",
                  "- " + goal("≤ 0.5× QEMU", None if sw is None or not q else sw / q, 0.5, False),
                  "- " + goal("≤ 2× floor", None if sw is None or not f else sw / f, 2.0, False)]
        return "\n".join(lines + self.tail_block("P1"))

    def p2(self) -> str:
        s = self.summary("P2", lambda r: r.values.get("rss_excl_guest_mib"))
        tot = self.summary("P2", lambda r: r.values.get("total_rss_mib"))
        priv = self.summary("P2", lambda r: r.values.get("private_excl_guest_mib"))
        guest = self.summary("P2", lambda r: r.values.get("guest_rss_mib"))
        sw = s.get("swiftlet", (None,))[0]
        lines = [self.header(), "",
                 f"Resident memory of the VMM process excluding guest RAM, sampled from `/proc/PID/smaps` "
                 f"≥ {self.args.rss_delay:g} s after start while `exitloop.elf iterations={self.args.rss_iterations}` "
                 f"runs (then the VMM is killed). Guest RAM = the single largest anonymous (or memfd) mapping "
                 f"whose size is ≥ the guest RAM size ({self.args.memory * 1024} kB); every other mapping's "
                 f"`Rss` is summed (shared library pages count in full). Lower is better.", ""]
        lines += self.rows("P2", s, " MiB", 1, 2, self.count_fn("P2"))
        lines += ["", "| VMM | total RSS (median) | private RSS excl. guest (median) | guest RAM resident (median) | guest mapping (last run) |",
                  "|---|---|---|---|---|"]
        for v in self.b.vmms:
            last = [r for r in self.ok_runs("P2", v.name)]
            gm = last[-1].values.get("guest_mapping", "—") if last else "—"
            lines.append(f"| {v.label} | {fmt(tot[v.name][0], ' MiB', 2)} | {fmt(priv[v.name][0], ' MiB', 2)} | "
                         f"{fmt(guest[v.name][0], ' MiB', 2)} | {gm} |")
        dev = [r.values["devices_rss_excl_guest_mib"] for r in self.ok_runs("P2", "swiftlet")
               if r.values.get("devices_rss_excl_guest_mib") is not None]
        dev_med = statistics.median(dev) if dev else None
        if dev:
            lines += ["", f"Swiftlet with all devices configured (a 16 MiB raw disk, a NIC on a tap, rng, vsock and the "
                          f"API socket; `swiftlet-devices` below), same sample: {dev_med:.2f} MiB median "
                          f"({min(dev):.2f}–{max(dev):.2f}, n={len(dev)})."]
        lines += ["", "Goals for Swiftlet:", "",
                  f"- ≤ {P2_GOAL_MIB:g} MiB excluding guest RAM: " +
                  ("not measured" if sw is None else f"{sw:.2f} MiB — {'met' if sw <= P2_GOAL_MIB else 'NOT met'}"),
                  f"- ≤ {P2_GOAL_MIB:g} MiB with all devices: " +
                  ("not measured" if dev_med is None else f"{dev_med:.2f} MiB — {'met' if dev_med <= P2_GOAL_MIB else 'NOT met'}")]
        return "\n".join(lines + self.tail_block("P2"))

    def p3(self) -> str:
        base, n = self.args.exit_base, self.args.exit_iterations
        mhz = tsc_mhz()
        per_round: dict[str, list[float]] = {}
        t_base: dict[str, list[float]] = {}
        t_n: dict[str, list[float]] = {}
        cyc: dict[str, list[float]] = {}
        for v in self.b.vmms:
            per_round[v.name], t_base[v.name], t_n[v.name], cyc[v.name] = [], [], [], []
            for rnd in range(self.args.runs):
                rs = {r.values.get("iterations"): r for r in self.all_runs("P3", v.name) if r.round == rnd and r.ok}
                if base in rs and n in rs:
                    dt = rs[n].wall_s - rs[base].wall_s
                    t_base[v.name].append(rs[base].wall_s)
                    t_n[v.name].append(rs[n].wall_s)
                    if dt > 0:
                        per_round[v.name].append((n - base) / dt)
                    cyc[v.name].append((rs[n].values["cycles"] - rs[base].values["cycles"]) / (n - base))
        s = {k: (statistics.median(x), min(x), max(x)) if x else (None, None, None) for k, x in per_round.items()}
        sw, q, f = s.get("swiftlet", (None,))[0], s.get("qemu", (None,))[0], s.get("floor", (None,))[0]
        med = lambda xs: statistics.median(xs) if xs else None
        lines = [self.header(), "",
                 f"`exitloop.elf`: ring-3 `outb` to port 0x80, each one a VM exit to the VMM. Each round runs "
                 f"iterations={base} and iterations={n}; rate = {n - base} / (t_{n} − t_{base}) from wall "
                 f"times, per round; median/min/max over rounds. Higher is better.", ""]
        lines += self.rows("P3", s, " exits/s", 1, 0, self.count_fn("P3", 2))
        lines += ["", f"| VMM | median t(iterations={base}) | median t(iterations={n}) | µs per exit (wall) | "
                      f"guest TSC cycles per exit | µs per exit (guest rdtsc{'' if mhz else ', TSC rate unknown'}) |",
                  "|---|---|---|---|---|---|"]
        for v in self.b.vmms:
            c = med(cyc[v.name])
            rate = s[v.name][0]
            lines.append(f"| {v.label} | {fmt(med(t_base[v.name]) and med(t_base[v.name]) * 1000, ' ms')} | "
                         f"{fmt(med(t_n[v.name]) and med(t_n[v.name]) * 1000, ' ms')} | "
                         f"{fmt(rate and 1e6 / rate, ' µs', 2)} | {fmt(c, '', 0)} | "
                         f"{fmt(c / mhz if c is not None and mhz else None, ' µs', 2)} |")
        if mhz:
            lines += ["", f"(Guest cycles are converted with the host's TSC rate, {mhz:g} MHz from /proc/cpuinfo.)"]
        lines += ["", "Goals for Swiftlet:", "",
                  "- " + goal("≥ 1.0× QEMU", None if sw is None or not q else sw / q, 1.0, True),
                  "- " + goal("≥ 0.8× floor", None if sw is None or not f else sw / f, 0.8, True)]
        return "\n".join(lines + self.tail_block("P3"))

    def machine(self) -> str:
        m = self.m
        return "\n".join([
            f"- Date: {m['date']}",
            f"- CPU: {m['cpu']} ({m['cpu_mhz']} MHz), `nproc` = {m['nproc']}",
            f"- Memory: {m['memory']}"
            + ("; the host is itself a virtual machine (CPUID hypervisor bit set)" if m.get("host_is_vm") else ""),
            f"- Kernel: {m['kernel']}",
            f"- KVM modules loaded: {m['kvm_modules']}"
            + (" (`/dev/kvm` is kvm_pvm: guest CPL3 runs natively, guest CPL0 is emulated)"
               if "kvm_pvm" in m["kvm_modules"] else ""),
            f"- QEMU: {m['qemu']}",
            f"- Python: {m['python']}; repository commit {m['repo_commit']}",
        ])


TITLES = {"machine": "Machine", "P1": "P1 — boot to power-off wall time",
          "P2": "P2 — VMM memory excluding guest RAM", "P3": "P3 — VM exits per second"}


def replace_section(doc: str, key: str, body: str) -> str:
    begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if pat.search(doc):
        return pat.sub(lambda _: block, doc, count=1)
    return doc.rstrip() + f"\n\n## {TITLES[key]}\n\n{block}\n"


# ---------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="measured rounds per benchmark (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded warm-up rounds (default 1; P2 has none)")
    ap.add_argument("--only", default=None, help="benchmarks to run, e.g. P1,P3 (default P1,P2,P3)")
    ap.add_argument("--vmms", default=",".join(VMM_NAMES), help="VMMs to run (default swiftlet,qemu,floor)")
    ap.add_argument("--swiftlet", default=str(REPO / ".build/release/swiftlet-vmm"), help="swiftlet-vmm binary")
    ap.add_argument("--floor", default=str(REPO / "benchmarks/build/floor"), help="floor VMM binary")
    ap.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary")
    ap.add_argument("--qemu-machine", default="microvm,acpi=on", help="QEMU -M value")
    ap.add_argument("--qemu-cpu", default="host,-arch-capabilities", help="QEMU -cpu value")
    ap.add_argument("--kit", default=str(REPO / "guest-kit/build"), help="guest kit build folder (*.elf)")
    ap.add_argument("--memory", type=int, default=128, help="guest RAM in MiB (default 128)")
    ap.add_argument("--timeout", type=float, default=30, help="per-run timeout in seconds (default 30)")
    ap.add_argument("--max-failures", type=int, default=2,
                    help="stop running a VMM in a benchmark when its first N runs all fail (default 2)")
    ap.add_argument("--rss-iterations", type=int, default=10**6, help="P2 exitloop iterations (default 1e6)")
    ap.add_argument("--rss-delay", type=float, default=1.0, help="P2: seconds before sampling (default 1)")
    ap.add_argument("--exit-iterations", type=int, default=20000, help="P3 N (default 20000)")
    ap.add_argument("--exit-base", type=int, default=0, help="P3 baseline iterations (default 0)")
    ap.add_argument("--write", nargs="?", const=str(REPO / "BENCHMARKS.md"), metavar="FILE",
                    help="replace the result sections of FILE (default BENCHMARKS.md at the repo root)")
    ap.add_argument("--json", metavar="FILE", help="also write every run (argv, times, output) as JSON")
    ap.add_argument("--from-json", metavar="FILE",
                    help="run nothing: report (and --write) the runs of an earlier --json")
    args = ap.parse_args()
    if args.from_json:
        return from_json(args, ap)

    only = [b.strip().upper() for b in (args.only or ",".join(BENCHES)).split(",") if b.strip()]
    bad = [b for b in only if b not in BENCHES]
    names = [v.strip().lower() for v in args.vmms.split(",") if v.strip()]
    if bad or any(n not in VMM_NAMES for n in names) or args.runs < 1 or args.exit_iterations <= args.exit_base:
        ap.error("bad --only, --vmms, --runs or --exit-iterations/--exit-base")

    machine = machine_info(args)
    binaries = {"swiftlet": args.swiftlet, "floor": args.floor, "qemu": args.qemu}
    vmms, skipped = [], []
    bench = Bench(args, [])
    for n in names:
        v = VMM(n, binaries[n], args.qemu_machine, args.qemu_cpu)
        if v.resolved():
            vmms.append(v)
        else:
            skipped.append(v)
            bench.skip_reason[n] = f"binary not found or not executable: {v.binary}"
            print(f"bench: {v.label}: {bench.skip_reason[n]}", file=sys.stderr)
    if skipped:
        # A comparison without one of its VMMs is not what was asked for: stop
        # before measuring (and before --write), and say how to get it.
        hints = {"swiftlet": "swift build -c release --product swiftlet-vmm", "floor": "make -C benchmarks/floor-vmm",
                 "qemu": "apt install qemu-system-x86"}
        print("bench: nothing run; build or install the missing VMMs, or leave them out with --vmms: "
              + "; ".join(f"{v.label}: {hints[v.name]}" for v in skipped), file=sys.stderr)
        return 2
    bench.vmms, bench.skipped = vmms, skipped
    needed = {"P1": ["hello"], "P2": ["exitloop"], "P3": ["exitloop"]}
    missing = sorted({p for b in only for p in needed[b] if not bench.elf(p).is_file()})
    if missing:
        print(f"bench: missing kit programs in {args.kit}: {', '.join(missing)} "
              f"(build them with `make -C guest-kit`)", file=sys.stderr)
        return 2

    for b in only:
        getattr(bench, b.lower())()
    machine["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]

    rep = Report(bench, machine)
    sections = {"machine": rep.machine()}
    for b in only:
        sections[b] = getattr(rep, b.lower())()
    md = []
    for key, body in sections.items():
        md += [f"## {TITLES[key]}", "", body, ""]
    print("\n".join(md))

    if args.write:
        path = Path(args.write)
        doc = path.read_text() if path.exists() else "# Swiftlet benchmarks\n"
        for key, body in sections.items():
            doc = replace_section(doc, key, body)
        path.write_text(doc)
        print(f"bench: wrote {', '.join(sections)} to {path}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "args": vars(args),
                                               "runs": [dataclasses.asdict(r) for r in bench.runs],
                                               "only": only, "commands": bench.commands, "notes": bench.notes,
                                               "skipped": {v.name: v.binary for v in skipped},
                                               "skip_reason": bench.skip_reason}, indent=1))
    any_fail = any(not r.ok for r in bench.runs) or skipped
    return 1 if any_fail else 0


def from_json(cli, ap: argparse.ArgumentParser) -> int:
    """The report of a saved --json again, with its own options (runs,
    warm-up, memory, ...); --write and --only from this command line."""
    saved = json.loads(Path(cli.from_json).read_text())
    args = ap.parse_args([])            # the defaults, for what the file lacks
    vars(args).update(saved["args"])
    names = [v.strip().lower() for v in args.vmms.split(",") if v.strip()]
    binaries = {"swiftlet": args.swiftlet, "floor": args.floor, "qemu": args.qemu}
    skipped = saved.get("skipped", {})
    bench = Bench(args, [VMM(n, binaries[n], args.qemu_machine, args.qemu_cpu) for n in names if n not in skipped])
    bench.skipped = [VMM(n, b, args.qemu_machine, args.qemu_cpu) for n, b in skipped.items()]
    bench.skip_reason = saved.get("skip_reason", {})
    bench.runs = [Run(**r) for r in saved["runs"]]
    bench.commands.update(saved.get("commands", {}))
    bench.notes.update(saved.get("notes", {}))
    ran = saved.get("only") or sorted({r.bench for r in bench.runs})
    only = [b.strip().upper() for b in cli.only.split(",") if b.strip().upper() in ran] if cli.only else ran
    rep = Report(bench, saved["machine"])
    sections = {"machine": rep.machine()}
    for b in only:
        sections[b] = getattr(rep, b.lower())()
    print("\n".join(f"## {TITLES[key]}\n\n{body}\n" for key, body in sections.items()))
    if cli.write:
        path = Path(cli.write)
        doc = path.read_text() if path.exists() else "# Swiftlet benchmarks\n"
        for key, body in sections.items():
            doc = replace_section(doc, key, body)
        path.write_text(doc)
        print(f"bench: wrote {', '.join(sections)} to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
