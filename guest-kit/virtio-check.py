#!/usr/bin/env python3
"""Functional virtio checks with the guest kit, on QEMU or on Swiftlet.

    guest-kit/virtio-check.py [--vmm qemu|swiftlet] [--binary PATH] [--only blk,net,...]

Runs the kit's virtio-rng, virtio-blk and virtio-net programs against the
VMM's virtio-pci devices and checks the host side too (the image after a
guest write, the frames on the tap). Each case prints one line
`ok|FAIL <case> (<seconds> s) [why]`; the summary is `N passed, N failed`,
exit status 1 on any failure.

QEMU runs `-M microvm,pcie=on` with `virtio-*-pci,disable-legacy=on`;
Swiftlet runs with `--disk path=...[,readonly=on][,id=...]`, `--net tap=...`
and `--rng`. Network cases need root (a network namespace with a tap is
created and deleted) and are skipped with a reason otherwise.

Hostile-chain cases (hostile=loop|oob|zerolen|oversize|wrongdir, on the
rng and on the blk device) pass when
the VMM survives (the kit powers off normally) and the device works again
after a reset; with --strict-hostile (the default for Swiftlet) the device
must also have refused the chain (DEVICE_NEEDS_RESET or an error status).
QEMU 7.2 accepts two of them: an indirect table longer than the queue
(oversize) and a header in unbacked guest memory (oob, read as zeros).
Python 3.11 standard library only.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
KIT_XOR = 0x5A5A5A5A5A5A5A5A
SECTOR = 512


def pattern_image(path: Path, mib: int) -> None:
    """Every 64-bit word of sector L holds L (little-endian)."""
    with open(path, "wb") as f:
        for lba in range(mib * 2048):
            f.write(struct.pack("<Q", lba) * 64)


def sector(path: Path, lba: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(lba * SECTOR)
        return f.read(SECTOR)


class Runner:
    def __init__(self, args):
        self.args = args
        self.vmm = args.vmm
        self.binary = args.binary or ("qemu-system-x86_64" if self.vmm == "qemu" else self._swiftlet())
        self.passed = self.failed = self.skipped = 0
        self.tmp = Path(tempfile.mkdtemp(prefix="kit-virtio-"))

    @staticmethod
    def _swiftlet() -> str:
        for p in (REPO / ".build/debug/swiftlet-vmm", REPO / ".build/release/swiftlet-vmm"):
            if p.exists():
                return str(p)
        return "swiftlet-vmm"

    def argv(self, prog: str, cmdline: str, disks=(), tap: str | None = None, rng: bool = False) -> list[str]:
        elf = str(HERE / "build" / f"{prog}.elf")
        if self.vmm == "swiftlet":
            a = [self.binary, "--kernel", elf, "--cpus", "1", "--memory", "128M", "--serial", "stdio",
                 "--cmdline", cmdline]
            for d in disks:
                spec = f"path={d['path']}" + (",readonly=on" if d.get("readonly") else "") + \
                    (f",id={d['id']}" if d.get("id") else "")
                a += ["--disk", spec]
            if tap:
                a += ["--net", f"tap={tap}"]
            if rng:
                a += ["--rng"]
            return a
        a = [self.binary, "-M", "microvm,pcie=on,acpi=on", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
             "-m", "128M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
             "-no-reboot", "-kernel", elf, "-append", cmdline]
        for i, d in enumerate(disks):
            a += ["-drive", f"file={d['path']},if=none,id=d{i},format=raw,discard=unmap"
                  + (",readonly=on" if d.get("readonly") else ""),
                  "-device", f"virtio-blk-pci,drive=d{i},disable-legacy=on"
                  + (f",serial={d['id']}" if d.get("id") else "")]
        if tap:
            a += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off",
                  "-device", "virtio-net-pci,netdev=n0,disable-legacy=on"]
        if rng:
            a += ["-device", "virtio-rng-pci,disable-legacy=on"]
        return a

    def boot(self, argv: list[str], timeout: float = 60) -> tuple[int | None, str]:
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
            return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace").replace("\r", "")
        except subprocess.TimeoutExpired as e:
            return None, ((e.stdout or b"") + (e.stderr or b"")).decode("utf-8", "replace")

    def case(self, name: str, fn) -> None:
        if self.args.only and not any(name.startswith(o) for o in self.args.only):
            return
        t0 = time.monotonic()
        try:
            why = fn()
        except Exception as e:                      # a broken case must not stop the others
            why = f"{type(e).__name__}: {e}"
        secs = time.monotonic() - t0
        if why == "skip":
            self.skipped += 1
            return
        if why:
            self.failed += 1
            print(f"FAIL {name} ({secs:.1f} s) {why}", flush=True)
        else:
            self.passed += 1
            print(f"ok   {name} ({secs:.1f} s)", flush=True)

    @staticmethod
    def kit_lines(out: str) -> str:
        return " / ".join(l for l in out.splitlines() if l.startswith("KIT ") and " pci " not in l)[-600:]

    def expect_pass(self, prog: str, rc, out: str) -> str | None:
        if rc is None:
            return f"timeout: {self.kit_lines(out)}"
        if f"KIT {prog} PASS" not in out:
            return f"no PASS (rc={rc}): {self.kit_lines(out)}"
        if rc != 0:
            return f"PASS but exit status {rc}"
        if self.args.verbose:
            print(self.kit_lines(out))
        return None

    # ------------------------------------------------------------ cases
    def rng(self):
        rc, out = self.boot(self.argv("virtio-rng", "bytes=16384", rng=True))
        return self.expect_pass("virtio-rng", rc, out)

    def rng_hostile(self, kind: str, indirect: int):
        strict = self.args.strict_hostile if self.args.strict_hostile is not None else self.vmm == "swiftlet"
        rc, out = self.boot(self.argv("virtio-rng", f"hostile={kind} indirect={indirect} "
                                      f"expect={'handled' if strict else 'any'}", rng=True))
        why = self.expect_pass("virtio-rng", rc, out)
        if not why and (self.args.verbose or not strict):
            line = next((l for l in out.splitlines() if "outcome=" in l), "")
            print(f"     {line.strip()}")
        return why

    def blk_functional(self, extra: str = ""):
        img = self.tmp / "disk.img"
        pattern_image(img, 16)
        cmd = f"id=kitdisk0 pattern=1 write_lba=100 write_count=8 zeroes_lba=300 discard_lba=200 {extra}".strip()
        rc, out = self.boot(self.argv("virtio-blk", cmd, disks=[{"path": img, "id": "kitdisk0"}]))
        why = self.expect_pass("virtio-blk", rc, out)
        if why:
            return why
        for lba in range(100, 108):
            if sector(img, lba) != struct.pack("<Q", lba ^ KIT_XOR) * 64:
                return f"image sector {lba} does not hold the guest's write after the VMM exited"
        for lba in (0, 7, 99, 108, 299, 308):
            if sector(img, lba) != struct.pack("<Q", lba) * 64:
                return f"image sector {lba} changed"
        if "write-zeroes lba=300 count=8 ok" in out:
            for lba in range(300, 308):
                if sector(img, lba) != bytes(SECTOR):
                    return f"image sector {lba} not zero after WRITE_ZEROES"
        return None

    def blk_readonly(self):
        img = self.tmp / "ro.img"
        pattern_image(img, 4)
        before = hashlib.sha256(img.read_bytes()).hexdigest()
        rc, out = self.boot(self.argv("virtio-blk", "pattern=1 readonly=1", disks=[{"path": img, "readonly": True}]))
        why = self.expect_pass("virtio-blk", rc, out)
        if why:
            return why
        if hashlib.sha256(img.read_bytes()).hexdigest() != before:
            return "read-only image changed"
        return None

    def blk_hostile(self, kind: str, indirect: int):
        img = self.tmp / "h.img"
        pattern_image(img, 4)
        strict = self.args.strict_hostile if self.args.strict_hostile is not None else self.vmm == "swiftlet"
        expect = "handled" if strict else "any"
        rc, out = self.boot(self.argv("virtio-blk", f"pattern=1 hostile={kind} indirect={indirect} expect={expect}",
                                      disks=[{"path": img}]))
        why = self.expect_pass("virtio-blk", rc, out)
        if why:
            return why
        if self.args.verbose or not strict:
            line = next((l for l in out.splitlines() if "outcome=" in l), "")
            print(f"     {line.strip()}")
        return None

    def net_echo(self):
        if os.geteuid() != 0 or not shutil.which("ip"):
            print("skip net-echo: needs root and iproute2 (network namespace + tap)")
            return "skip"
        ns, tap = f"kitchk{os.getpid()}", "kc0"
        try:
            subprocess.run(["ip", "netns", "add", ns], check=True)
            for c in (["ip", "link", "set", "lo", "up"], ["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
                      ["ip", "link", "set", tap, "up"]):
                subprocess.run(["ip", "netns", "exec", ns] + c, check=True)
            peer = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable,
                                     str(REPO / "benchmarks/kit-net-peer.py"), "echo", "--iface", tap,
                                     "--guest-frames", "4", "--pings", "16", "--timeout", "60"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            time.sleep(0.3)
            rc, out = self.boot(["ip", "netns", "exec", ns] + self.argv("virtio-net", "send=4 echo=16", tap=tap))
            try:
                pout = peer.communicate(timeout=30)[0].decode()
            except subprocess.TimeoutExpired:
                peer.kill()
                pout = peer.communicate()[0].decode() + " (peer timed out)"
            why = self.expect_pass("virtio-net", rc, out)
            if why:
                return why
            if '"ok": true' not in pout:
                return f"host peer: {pout.strip()[-300:]}"
            return None
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)

    def all(self) -> int:
        print(f"virtio-check: {self.vmm} ({self.binary})", flush=True)
        self.case("rng", self.rng)
        for kind in ("loop", "oob", "zerolen", "oversize", "wrongdir"):
            for ind in (1, 0):
                self.case(f"rng-hostile-{kind}-indirect{ind}", lambda k=kind, i=ind: self.rng_hostile(k, i))
        self.case("blk", self.blk_functional)
        self.case("blk-direct-noevent", lambda: self.blk_functional("indirect=0 event_idx=0 qsize=64"))
        self.case("blk-readonly", self.blk_readonly)
        for kind in ("loop", "oob", "zerolen", "oversize", "wrongdir"):
            for ind in (1, 0):
                self.case(f"blk-hostile-{kind}-indirect{ind}", lambda k=kind, i=ind: self.blk_hostile(k, i))
        self.case("net-echo", self.net_echo)
        shutil.rmtree(self.tmp, ignore_errors=True)
        print(f"{self.passed} passed, {self.failed} failed" + (f", {self.skipped} skipped" if self.skipped else ""))
        return 1 if self.failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vmm", choices=("qemu", "swiftlet"), default="qemu")
    ap.add_argument("--binary", help="VMM binary (default: qemu-system-x86_64 / .build/debug/swiftlet-vmm)")
    ap.add_argument("--only", default="", help="comma-separated case-name prefixes, e.g. blk,net")
    ap.add_argument("--strict-hostile", dest="strict_hostile", action="store_true", default=None)
    ap.add_argument("--lenient-hostile", dest="strict_hostile", action="store_false")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    args.only = [o for o in args.only.split(",") if o]
    for prog in ("virtio-rng", "virtio-blk", "virtio-net"):
        if not (HERE / "build" / f"{prog}.elf").exists():
            print(f"virtio-check: guest-kit/build/{prog}.elf missing (make -C guest-kit)", file=sys.stderr)
            return 2
    return Runner(args).all()


if __name__ == "__main__":
    sys.exit(main())
