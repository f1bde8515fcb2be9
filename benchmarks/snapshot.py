#!/usr/bin/env python3
"""S1-S3: snapshot and restore of the default Linux guest, Swiftlet vs QEMU.

Both VMMs boot the same vmlinux + initramfs.cpio with the same kernel command
line (the image's `cmdline` plus `swiftlet.serial-cmd`), 1 vCPU, 256 MiB.
The guest's /init prints SWIFTLET-AWAIT-CMD and waits for a command on its
console: that is where the snapshot is taken.

  S1  save: Swiftlet `PATCH /vm {"state":"Paused"}`, then
      `PUT /snapshot/create` (Full); QEMU QMP `stop`, then
      `migrate exec:cat > FILE` polled with query-migrate until completed.
      Pause and save are timed apart; the files' sizes (apparent and
      allocated) are recorded.
  S2  restore to running: from spawning the VMM until the VM runs.
      Swiftlet: `swiftlet-vmm --api-sock S`, `PUT /snapshot/load` with
      `resume_vm: true`, until its 204. QEMU: the boot's command line plus
      `-incoming "exec:cat FILE"`, until QMP query-status says running.
  S3  restore to a command's output: from the same spawn until the line
      printed by `echo restored-ok`, sent over the console once the VM runs
      (guest/init's protocol: the number of lines, then the script), appears.

Rounds are interleaved (each round runs every VMM once, the first one
rotating), every child runs in its own process group in a temporary folder
and is killed at the end of its step or on any exit of this script.

If `swiftlet run` supports snapshots (`swiftlet help run` mentions --no-snapshot),
it also times `swiftlet run -- echo hi` (warm: restores the default guest's
snapshot) against `swiftlet run --no-snapshot -- echo hi` (cold boot); the
first warm run, which may take the snapshot, is not counted.

    python3 benchmarks/snapshot.py [--runs 5] [--json FILE] [--write]
"""
import argparse
import atexit
import http.client
import json
import os
import pathlib
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
READY = b"SWIFTLET-AWAIT-CMD"
COMMAND = "echo restored-ok"
OUTPUT = b"restored-ok"
STATUS = b"SWIFTLET-EXIT-STATUS="
STATUS_LINE = (b"SWIFTLET-EXIT-STATUS=0\r", b"SWIFTLET-EXIT-STATUS=0\n")
QEMU_CPU = "host,-arch-capabilities,+xsaveerptr,-kvm-pv-ipi,-kvm-pv-sched-yield,-kvm-pv-unhalt"
SECTION_BEGIN, SECTION_END = "<!-- snapshots:begin -->", "<!-- snapshots:end -->"


class Failure(Exception):
    pass


# ---------------------------------------------------------------- processes

CHILDREN = []


def kill_children():
    for child in list(CHILDREN):
        child.kill()


atexit.register(kill_children)


def on_signal(number, _frame):
    kill_children()
    sys.exit(128 + number)


def found(marker, output):
    """`marker` is bytes, or a tuple of alternatives; a leading newline also matches the start of the output."""
    output = b"\n" + output
    return any(m in output for m in marker) if isinstance(marker, tuple) else marker in output


def label(marker):
    return repr(marker[0] if isinstance(marker, tuple) else marker)[1:]


class Child:
    """A VMM in its own process group; stdout read by a thread that notes when each marker first appears."""

    def __init__(self, argv, cwd, name, watch=(), env=None):
        self.argv, self.name = argv, name
        self.stderr_path = pathlib.Path(cwd) / f"{name}.stderr"
        self.stderr = open(self.stderr_path, "wb")
        self.output = b""
        self.marks = {}
        self.cond = threading.Condition()
        self.start = time.monotonic()
        self.process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr, start_new_session=True, env=env)
        CHILDREN.append(self)
        self.watch = list(watch)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        fd = self.process.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            now = time.monotonic()
            with self.cond:
                if not chunk:
                    self.marks.setdefault("eof", now)
                    self.cond.notify_all()
                    return
                self.output += chunk
                for marker in self.watch:
                    if marker not in self.marks and found(marker, self.output):
                        self.marks[marker] = now
                self.cond.notify_all()

    def wait_for(self, marker, timeout):
        """The monotonic time `marker` appeared in the output (watched from now on, searched in all output)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            if marker not in self.watch:
                self.watch.append(marker)
                if found(marker, self.output):
                    self.marks[marker] = time.monotonic()
            while marker not in self.marks:
                if "eof" in self.marks:
                    self.process.poll()
                    raise Failure(f"{self.name}: exited (status {self.process.returncode}) before {label(marker)}; "
                                  f"{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failure(f"{self.name}: no {label(marker)} after {timeout:.0f} s; {self.tail()}")
                self.cond.wait(min(left, 0.5))
            return self.marks[marker]

    def send(self, data: bytes):
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def tail(self):
        err = self.stderr_path.read_bytes()[-300:] if self.stderr_path.exists() else b""
        return f"last output: {self.output[-300:]!r}; stderr: {err!r}"

    def wait_exit(self, timeout):
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            # The leader is gone; its group (QEMU's `sh -c cat ...`) may not be.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.stderr.close()
        if self in CHILDREN:
            CHILDREN.remove(self)


def console_command(command: str) -> bytes:
    """guest/init's serial-cmd protocol (as `swiftlet run` sends it): the number of lines of the script, then the script."""
    script = command.rstrip("\n")
    return f"{script.count(chr(10)) + 1}\n{script}\n".encode()


def wait_for_socket(path, timeout, child):
    """Connects to the Unix socket as soon as it accepts; returns the connected socket."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if child.process.poll() is not None:
                raise Failure(f"{child.name}: exited (status {child.process.returncode}) before serving {path}; {child.tail()}")
            if time.monotonic() > deadline:
                raise Failure(f"{child.name}: {path} not served after {timeout:.0f} s")
            time.sleep(0.0005)


# ---------------------------------------------------------------- Swiftlet API

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, sock, timeout):
        super().__init__("localhost", timeout=timeout)
        self.sock = sock
        sock.settimeout(timeout)


class SwiftletAPI:
    def __init__(self, path, child, timeout=60):
        self.path, self.child, self.timeout = path, child, timeout
        self.connection = UnixHTTPConnection(wait_for_socket(path, timeout, child), timeout)

    def call(self, method, route, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        try:
            self.connection.request(method, route, body=data, headers=headers)
            response = self.connection.getresponse()
            text = response.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as error:
            raise Failure(f"{self.child.name}: {method} {route}: {error!r}; {self.child.tail()}")
        if response.status // 100 != 2:
            raise Failure(f"{self.child.name}: {method} {route} {json.dumps(body)} -> {response.status} {text}")
        return response.status, text

    def close(self):
        self.connection.close()


# ---------------------------------------------------------------- QMP

class QMP:
    def __init__(self, path, child, timeout=60):
        self.child, self.timeout = child, timeout
        self.sock = wait_for_socket(path, timeout, child)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rwb", buffering=0)
        self.events = []
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self):
        line = self.file.readline()
        if not line:
            raise Failure(f"{self.child.name}: QMP closed; {self.child.tail()}")
        return json.loads(line)

    def execute(self, command, arguments=None):
        message = {"execute": command}
        if arguments is not None:
            message["arguments"] = arguments
        self.file.write(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append((time.monotonic(), reply))
                continue
            if "error" in reply:
                raise Failure(f"{self.child.name}: QMP {command} {json.dumps(arguments)}: {reply['error']}")
            return reply.get("return")

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------- sizes

def children(pid):
    """The child processes of `pid` (any of its threads), zombies included."""
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                found += pathlib.Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            except OSError:
                pass
    except OSError:
        pass
    return found


def sizes(paths):
    apparent = sum(os.stat(p).st_size for p in paths)
    allocated = sum(os.stat(p).st_blocks * 512 for p in paths)
    return apparent, allocated


# ---------------------------------------------------------------- the VMMs

class Setup:
    def __init__(self, args, guest):
        self.args = args
        self.kernel = str(guest / "vmlinux")
        self.initrd = str(guest / "initramfs.cpio")
        self.cmdline = (guest / "cmdline").read_text().strip() + " swiftlet.serial-cmd"
        self.memory = args.memory

    def swiftlet_boot_argv(self, sock):
        return [self.args.swiftlet, "--api-sock", str(sock), "--kernel", self.kernel, "--initrd", self.initrd,
                "--cmdline", self.cmdline, "--cpus", "1", "--memory", self.memory]

    def swiftlet_restore_argv(self, sock):
        return [self.args.swiftlet, "--api-sock", str(sock)]

    def qemu_argv(self, qmp, incoming=None):
        argv = [self.args.qemu, "-M", "microvm,acpi=on", "-accel", "kvm", "-cpu", QEMU_CPU,
                "-m", self.memory, "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
                "-serial", "stdio", "-no-reboot", "-kernel", self.kernel, "-initrd", self.initrd,
                "-append", self.cmdline, "-qmp", f"unix:{qmp},server=on,wait=off"]
        if incoming:
            argv += ["-incoming", f"exec:cat {shlex.quote(str(incoming))}"]
        return argv


def restore_and_run(child, started, running_at, args, sample):
    """Sends the command over the console of a running restored VM; fills S3 in `sample`."""
    sample["restore_to_running_s"] = running_at - started
    child.send(console_command(COMMAND))
    output_at = child.wait_for(OUTPUT, args.timeout)
    sample["restore_to_output_s"] = output_at - started
    sample["running_to_output_s"] = output_at - running_at
    child.wait_for(STATUS, args.timeout)
    try:
        status_at = child.wait_for(STATUS_LINE, 5)
    except Failure:
        line = child.output[child.output.index(STATUS):].split(b"\n", 1)[0].strip()
        raise Failure(f"{child.name}: the command reported {line.decode(errors='replace')}; {child.tail()}")
    sample["restore_to_exit_status_s"] = status_at - started
    code = child.wait_exit(args.timeout)
    if code is not None:
        sample["restore_to_process_exit_s"] = time.monotonic() - started
        sample["restored_exit_code"] = code


def swiftlet_round(setup, args, work, sample):
    sock = work / "boot.sock"
    state, memory = work / "snapshot.state", work / "snapshot.mem"
    argv = setup.swiftlet_boot_argv(sock)
    sample["boot_argv"] = argv
    boot = Child(argv, work, "swiftlet-boot", watch=[READY])
    try:
        ready = boot.wait_for(READY, args.boot_timeout)
        sample["boot_to_await_s"] = ready - boot.start
        api = SwiftletAPI(sock, boot)
        t0 = time.monotonic()
        api.call("PATCH", "/vm", {"state": "Paused"})
        t1 = time.monotonic()
        api.call("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": str(state),
                                              "mem_file_path": str(memory)})
        t2 = time.monotonic()
        api.close()
        sample.update(pause_s=t1 - t0, save_s=t2 - t1, pause_save_s=t2 - t0, save_durable_s=t2 - t1)
        sample["state_bytes"], sample["state_allocated"] = sizes([state])
        sample["memory_bytes"], sample["memory_allocated"] = sizes([memory])
        sample["files_bytes"], sample["files_allocated"] = sizes([state, memory])
    finally:
        boot.kill()

    sock = work / "restore.sock"
    argv = setup.swiftlet_restore_argv(sock)
    sample["restore_argv"] = argv
    sample["restore_request"] = {"snapshot_path": str(state),
                                 "mem_backend": {"backend_type": "File", "backend_path": str(memory)},
                                 "resume_vm": True}
    restored = Child(argv, work, "swiftlet-restore", watch=[OUTPUT, STATUS, STATUS_LINE])
    try:
        api = SwiftletAPI(sock, restored)
        api.call("PUT", "/snapshot/load", sample["restore_request"])
        running_at = time.monotonic()
        api.close()
        restore_and_run(restored, restored.start, running_at, args, sample)
    finally:
        restored.kill()
    for path in (state, memory):
        path.unlink(missing_ok=True)
    return sample


def qemu_round(setup, args, work, sample):
    qmp_path = work / "boot.qmp"
    image = work / "qemu.state"
    argv = setup.qemu_argv(qmp_path)
    sample["boot_argv"] = argv
    boot = Child(argv, work, "qemu-boot", watch=[READY])
    try:
        ready = boot.wait_for(READY, args.boot_timeout)
        sample["boot_to_await_s"] = ready - boot.start
        qmp = QMP(qmp_path, boot)
        # As libvirt's `virsh save` does: no bandwidth cap for a save to a file
        # (QEMU's default max-bandwidth is 32 MiB/s, for live migration).
        qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        t0 = time.monotonic()
        qmp.execute("stop")
        t1 = time.monotonic()
        qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(image))}"})
        while True:
            status = qmp.execute("query-migrate").get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise Failure(f"qemu-boot: migration {status}: {qmp.execute('query-migrate')}")
            if time.monotonic() - t1 > args.timeout:
                raise Failure(f"qemu-boot: migration still {status} after {args.timeout:.0f} s")
            time.sleep(0.001)
        completed = time.monotonic()
        # "completed" can come before QEMU has closed the pipe and reaped
        # `sh -c 'cat > FILE'`: the file is whole only once that child is gone.
        while children(boot.process.pid):
            if time.monotonic() - completed > args.timeout:
                raise Failure("qemu-boot: the migration's `cat` child did not exit")
            time.sleep(0.0005)
        t2 = time.monotonic()
        qmp.close()
        sample.update(pause_s=t1 - t0, save_s=t2 - t1, pause_save_s=t2 - t0, migrate_completed_s=completed - t1)
        sample["files_bytes"], sample["files_allocated"] = sizes([image])
        # Swiftlet's create fsyncs its files (and their folder); this is what
        # the same durability costs QEMU's file.
        t3 = time.monotonic()
        fd = os.open(image, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        sample["fsync_s"] = time.monotonic() - t3
        sample["save_durable_s"] = sample["save_s"] + sample["fsync_s"]
    finally:
        boot.kill()

    qmp_path = work / "restore.qmp"
    argv = setup.qemu_argv(qmp_path, incoming=image)
    sample["restore_argv"] = argv
    restored = Child(argv, work, "qemu-restore", watch=[OUTPUT, STATUS, STATUS_LINE])
    try:
        qmp = QMP(qmp_path, restored)
        deadline = time.monotonic() + args.timeout
        while True:
            status = qmp.execute("query-status")
            if status.get("running"):
                running_at = time.monotonic()
                break
            if status.get("status") not in ("inmigrate", "prelaunch", "restore-vm"):
                if status.get("status") == "paused":
                    qmp.execute("cont")
                    continue
                raise Failure(f"qemu-restore: status {status}; {restored.tail()}")
            if time.monotonic() > deadline:
                raise Failure(f"qemu-restore: not running after {args.timeout:.0f} s ({status})")
            time.sleep(0.0005)
        qmp.close()
        restore_and_run(restored, restored.start, running_at, args, sample)
    finally:
        restored.kill()
    image.unlink(missing_ok=True)
    return sample


# ---------------------------------------------------------------- swiftlet run

def swiftlet_run_supported(binary):
    if not binary or not os.access(binary, os.X_OK):
        return False, f"{binary}: not found (build it: swift build -c release --product swiftlet)"
    try:
        # `swiftlet run --help` passes --help on to swiftlet-vmm; `swiftlet help run` is the CLI's own.
        text = subprocess.run([binary, "help", "run"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"{binary} help run failed: {error}"
    if "--no-snapshot" not in text:
        return False, f"`{binary} help run` does not mention --no-snapshot: swiftlet run has no snapshots yet"
    return True, ""


HI = (b"\nhi\r\n", b"\nhi\n")


def time_swiftlet_run(argv, work, timeout, name):
    child = Child(argv, work, name, watch=[HI])
    try:
        output_at = child.wait_for(HI, timeout)
        code = child.wait_exit(timeout)
        end = time.monotonic()
        if code != 0:
            raise Failure(f"{name}: exit status {code}; {child.tail()}")
        if "--no-snapshot" not in argv and b"saved the booted guest" in child.stderr_path.read_bytes():
            raise Failure(f"{name}: booted cold and saved a new snapshot (the cached one was evicted or refused); {child.tail()}")
        return {"argv": argv, "to_output_s": output_at - child.start, "wall_s": end - child.start}
    finally:
        child.kill()


# ---------------------------------------------------------------- report

def loadavg():
    return pathlib.Path("/proc/loadavg").read_text().split()[:3]


def fmt_time(seconds):
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_size(n):
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


def stat(samples, key):
    values = [s[key] for s in samples if key in s]
    if not values:
        return None
    return statistics.median(values), min(values), max(values), len(values)


def cell(st, fmt):
    if st is None:
        return "—"
    median, low, high, _ = st
    return f"{fmt(median)} ({fmt(low)}–{fmt(high)})"


def ratio(a, b):
    if a is None or b is None or b[0] == 0:
        return "—"
    return f"{a[0] / b[0]:.2f}×"


def filesystem(path):
    """The type of the file system holding `path`, from /proc/mounts (longest mount point)."""
    path = os.path.realpath(path)
    best, kind = "", "unknown"
    for line in pathlib.Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and (path == fields[1] or path.startswith(fields[1].rstrip("/") + "/")) and len(fields[1]) >= len(best):
            best, kind = fields[1], fields[2]
    return f"{kind} on {best}"


def machine_notes(args):
    cpu = "unknown"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    modules = [m for m in ("kvm_pvm", "kvm_intel", "kvm_amd") if pathlib.Path(f"/sys/module/{m}").exists()]
    qemu = subprocess.run([args.qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return (f"{cpu}, `nproc` = {os.cpu_count()}, kernel {platform.release()}, KVM modules: {', '.join(modules) or 'none'}; "
            f"{qemu}; Python {platform.python_version()}; commit {commit}")


def report(meta, results, failures, run_rows, run_note):
    """The Markdown section; `meta` is what the JSON keeps under "meta" (so --from-json renders it again)."""
    sw, qe = results["Swiftlet"], results["QEMU"]
    runs = meta["runs"]
    ok = lambda samples: sum(1 for s in samples if "error" not in s)
    lines = [f"_Measured {meta['started']} on {meta['machine']}. Default guest `{meta['guest_name']}`, 1 vCPU, {meta['memory']}; "
             f"{runs} interleaved rounds (first VMM rotating); snapshot files in a temporary folder under "
             f"{meta['tmp']}, still in the page cache when restored. "
             f"Host load average at start {' '.join(meta['load_start'])}, at end {' '.join(meta['load_end'])}._", "",
             "Median (min–max) over the rounds; the ratio is Swiftlet's median over QEMU's (below 1: Swiftlet is faster or smaller).", "",
             f"| | Measures | Swiftlet ({ok(sw)}/{runs} rounds ok) | QEMU microvm ({ok(qe)}/{runs} rounds ok) | Swiftlet / QEMU |",
             "|---|---|---|---|---|"]
    rows = [
        ("—", "cold boot to SWIFTLET-AWAIT-CMD (process start; for reference)", "boot_to_await_s", fmt_time),
        ("S1", "pause (`PATCH /vm Paused` / QMP `stop`)", "pause_s", fmt_time),
        ("S1", "save (`PUT /snapshot/create` Full / `migrate exec:cat > FILE` until completed)", "save_s", fmt_time),
        ("S1", "pause + save", "pause_save_s", fmt_time),
        ("S1", "save, durable (Swiftlet's create fsyncs its files; QEMU's save + an fsync of its file)", "save_durable_s", fmt_time),
        ("S1", "snapshot files, apparent size (state + memory / migration stream)", "files_bytes", fmt_size),
        ("S1", "snapshot files, allocated (st_blocks × 512)", "files_allocated", fmt_size),
        ("S2", "restore to VM running: spawn → `PUT /snapshot/load` 204 / QMP query-status running", "restore_to_running_s", fmt_time),
        ("S3", f"restore to command output: spawn → `{COMMAND}`'s line on the console", "restore_to_output_s", fmt_time),
        ("S3", "of which: command sent → its output (the guest reads it, forks a subshell, echoes)", "running_to_output_s", fmt_time),
        ("S3", "restore to SWIFTLET-EXIT-STATUS=0", "restore_to_exit_status_s", fmt_time),
    ]
    for label, what, key, fmt in rows:
        a, b = stat(sw, key), stat(qe, key)
        lines.append(f"| {label} | {what} | {cell(a, fmt)} | {cell(b, fmt)} | {ratio(a, b)} |")
    state, memory = stat(sw, "state_bytes"), stat(sw, "memory_bytes")
    if state and memory:
        lines += ["", f"Swiftlet's files: state {fmt_size(state[0])} (allocated {fmt_size(stat(sw, 'state_allocated')[0])}), "
                      f"memory {fmt_size(memory[0])} (allocated {fmt_size(stat(sw, 'memory_allocated')[0])}), medians."]
    lines += ["", "### `swiftlet run`: warm (snapshot) vs cold", ""]
    if run_rows is None:
        lines.append(f"Not measured: {run_note}. The script measures it by itself once `swiftlet help run` "
                     "lists `--no-snapshot` (or with `--swiftlet-cli PATH`).")
    else:
        warm, cold = stat(run_rows, "warm_wall_s"), stat(run_rows, "cold_wall_s")
        warm_out, cold_out = stat(run_rows, "warm_to_output_s"), stat(run_rows, "cold_to_output_s")
        q3 = stat(qe, "restore_to_output_s")
        speedup = lambda a, b: f"{b[0] / a[0]:.1f}×" if a and b and a[0] else "—"
        lines += ["| command | to `hi` on stdout | to exit | speed-up over cold (output / exit) | vs QEMU's S3 restore to output |",
                  "|---|---|---|---|---|",
                  f"| `swiftlet run -- echo hi` (warm) | {cell(warm_out, fmt_time)} | {cell(warm, fmt_time)} | "
                  f"{speedup(warm_out, cold_out)} / {speedup(warm, cold)} | {ratio(warm_out, q3)} |",
                  f"| `swiftlet run --no-snapshot -- echo hi` (cold) | {cell(cold_out, fmt_time)} | {cell(cold, fmt_time)} | "
                  f"1.0× / 1.0× | {ratio(cold_out, q3)} |",
                  "", "Goals: warm ≥ 10× faster than cold: " +
                  ("met" if warm and cold and cold[0] >= 10 * warm[0] else "NOT met") +
                  f"; warm faster than QEMU's `-incoming` restore to output ({fmt_time(q3[0]) if q3 else '—'}): " +
                  ("met" if warm_out and q3 and warm_out[0] < q3[0] else "NOT met") + "."]
        if run_note:
            lines += ["", run_note]
    lines += ["", "Commands (temporary paths shortened to `$T`):", ""]
    sw = [s for s in sw if "restore_argv" in s]
    qe = [s for s in qe if "restore_argv" in s]
    if sw:
        t = lambda argv: shlex.join(argv).replace(str(pathlib.Path(sw[-1]["boot_argv"][2]).parent), "$T")
        lines += [f"- Swiftlet boot: `{t(sw[-1]['boot_argv'])}`, then `PATCH /vm {{\"state\":\"Paused\"}}`, "
                  f"`PUT /snapshot/create {{\"snapshot_type\":\"Full\",\"snapshot_path\":\"$T/snapshot.state\",\"mem_file_path\":\"$T/snapshot.mem\"}}`",
                  f"- Swiftlet restore: `{t(sw[-1]['restore_argv'])}`, then `PUT /snapshot/load "
                  f"{json.dumps(sw[-1]['restore_request']).replace(str(pathlib.Path(sw[-1]['boot_argv'][2]).parent), '$T')}`"]
    if qe:
        t = lambda argv: shlex.join(argv).replace(str(pathlib.Path(qe[-1]["boot_argv"][-1].split(",")[0][5:]).parent), "$T")
        lines += [f"- QEMU boot: `{t(qe[-1]['boot_argv'])}`, then QMP `migrate-set-parameters max-bandwidth=2^40`, `stop`, "
                  "`migrate exec:cat > $T/qemu.state`, query-migrate every 1 ms until completed and QEMU has reaped its `cat` child",
                  f"- QEMU restore: `{t(qe[-1]['restore_argv'])}`, query-status every 0.5 ms until running"]
    lines += [f"- The command, once the VM runs: `1\\n{COMMAND}\\n` written to the VMM's stdin (the guest's ttyS0; "
              "guest/init's serial-cmd protocol: the number of lines, then the script, run in a subshell)."]
    lines += ["", f"Produced by: `{meta['produced_by']}`"]
    if failures:
        lines += ["", "Failures:", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines)


def write_section(text, path, begin=SECTION_BEGIN, end=SECTION_END, title="Snapshots (S1-S3)"):
    """Replaces the text between the `begin` and `end` markers of `path`, or appends a `title` section with them."""
    content = path.read_text()
    section = f"{begin}\n{text}\n{end}"
    if begin in content and end in content:
        content = content[:content.index(begin)] + section + content[content.index(end) + len(end):]
    else:
        content = content.rstrip("\n") + f"\n\n## {title}\n\n" + section + "\n"
    path.write_text(content)


# ---------------------------------------------------------------- main

def guest_dir(args):
    if args.guest:
        return pathlib.Path(args.guest)
    path = subprocess.run([str(ROOT / "guest/build-image"), "--print-path"], check=True,
                          stdout=subprocess.PIPE, text=True).stdout.strip()
    return pathlib.Path(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory", default="256M")
    parser.add_argument("--vmms", default="swiftlet,qemu", help="comma-separated: swiftlet, qemu")
    parser.add_argument("--boot-timeout", type=float, default=180, help="seconds for a cold boot to SWIFTLET-AWAIT-CMD")
    parser.add_argument("--timeout", type=float, default=60, help="seconds for each other step")
    parser.add_argument("--swiftlet", default=None, help="swiftlet-vmm (default .build/release, then .build/debug)")
    parser.add_argument("--swiftlet-cli", default=None, help="the swiftlet CLI, for the `swiftlet run` rows "
                        "(default: next to swiftlet-vmm); they run when its `help run` lists --no-snapshot")
    parser.add_argument("--no-swiftlet-run", action="store_true", help="skip the `swiftlet run` rows")
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--guest", default=None, help="the guest folder (default: guest/build-image --print-path; "
                        "SWIFTLET_GUEST_CACHE moves its cache)")
    parser.add_argument("--tmp", default=None, help="where the temporary folder goes (default $TMPDIR or /tmp)")
    parser.add_argument("--json", default=None, help="write every sample here")
    parser.add_argument("--from-json", default=None, metavar="FILE",
                        help="run nothing: print (and --write) the report of a --json file again")
    parser.add_argument("--write", nargs="?", const=str(ROOT / "BENCHMARKS.md"), default=None,
                        help="replace the snapshots section of BENCHMARKS.md (or FILE)")
    args = parser.parse_args()
    cache = os.environ.get("SWIFTLET_GUEST_CACHE")
    args.produced_by = ((f"SWIFTLET_GUEST_CACHE={shlex.quote(cache)} " if cache else "") +
                        "python3 benchmarks/snapshot.py " + shlex.join(sys.argv[1:])).strip()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    if args.swiftlet is None:
        for candidate in (ROOT / ".build/release/swiftlet-vmm", ROOT / ".build/debug/swiftlet-vmm"):
            if candidate.exists():
                args.swiftlet = str(candidate)
                break
        else:
            args.swiftlet = str(ROOT / ".build/release/swiftlet-vmm")
    if args.swiftlet_cli is None:
        args.swiftlet_cli = str(pathlib.Path(args.swiftlet).parent / "swiftlet")
    vmms = [v.strip() for v in args.vmms.split(",") if v.strip()]
    names = {"swiftlet": "Swiftlet", "qemu": "QEMU"}
    rounds = {"swiftlet": swiftlet_round, "qemu": qemu_round}

    if args.from_json:
        saved = json.loads(pathlib.Path(args.from_json).read_text())
        text = report(saved["meta"], saved["results"], saved["failures"], saved["swiftlet_run"], saved["swiftlet_run_note"])
        print(text)
        if args.write:
            write_section(text, pathlib.Path(args.write))
        return 1 if saved["failures"] else 0

    guest = guest_dir(args)
    setup = Setup(args, guest)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_start = loadavg()
    results = {"Swiftlet": [], "QEMU": []}
    failures = []
    run_rows, run_note = None, ""
    with tempfile.TemporaryDirectory(prefix="snapbench.", dir=args.tmp) as tmp:
        tmp = pathlib.Path(tmp)
        for number in range(args.runs):
            order = vmms[number % len(vmms):] + vmms[:number % len(vmms)]
            for vmm in order:
                work = tmp / f"{vmm}-{number + 1}"
                work.mkdir()
                sample = {"round": number + 1}
                results[names[vmm]].append(sample)
                try:
                    rounds[vmm](setup, args, work, sample)
                    sample["loadavg"] = loadavg()
                    print(f"round {number + 1} {names[vmm]}: boot {fmt_time(sample['boot_to_await_s'])}, "
                          f"pause {fmt_time(sample['pause_s'])}, save {fmt_time(sample['save_s'])} "
                          f"({fmt_size(sample['files_bytes'])}, {fmt_size(sample['files_allocated'])} allocated), "
                          f"running {fmt_time(sample['restore_to_running_s'])}, "
                          f"output {fmt_time(sample['restore_to_output_s'])}; load {' '.join(sample['loadavg'])}",
                          file=sys.stderr)
                except Failure as error:
                    sample["error"] = str(error)
                    sample["loadavg"] = loadavg()
                    failures.append(f"round {number + 1} {names[vmm]}: {error}")
                    print(f"round {number + 1} {names[vmm]}: FAILED: {error}", file=sys.stderr)

        if not args.no_swiftlet_run:
            supported, run_note = swiftlet_run_supported(args.swiftlet_cli)
            if supported:
                run_rows = []
                warm_argv = [args.swiftlet_cli, "run", "--", "echo", "hi"]
                cold_argv = [args.swiftlet_cli, "run", "--no-snapshot", "--", "echo", "hi"]
                work = tmp / "swiftlet-run"
                work.mkdir()
                try:
                    first = time_swiftlet_run(warm_argv, work, args.boot_timeout + args.timeout, "swiftlet-run-first")
                    run_note = f"The first `swiftlet run -- echo hi` of the session (not counted) took {fmt_time(first['wall_s'])}."
                    print(f"swiftlet run, first: {fmt_time(first['wall_s'])}", file=sys.stderr)
                except Failure as error:
                    failures.append(f"swiftlet run (first): {error}")
                for number in range(args.runs):
                    row = {"round": number + 1}
                    for kind in (("warm", "cold") if number % 2 == 0 else ("cold", "warm")):
                        argv = warm_argv if kind == "warm" else cold_argv
                        try:
                            timing = time_swiftlet_run(argv, work, args.boot_timeout + args.timeout, f"swiftlet-run-{kind}")
                            row[f"{kind}_to_output_s"], row[f"{kind}_wall_s"] = timing["to_output_s"], timing["wall_s"]
                            print(f"round {number + 1} swiftlet run {kind}: output {fmt_time(timing['to_output_s'])}, "
                                  f"exit {fmt_time(timing['wall_s'])}", file=sys.stderr)
                        except Failure as error:
                            failures.append(f"round {number + 1} swiftlet run {kind}: {error}")
                            print(f"round {number + 1} swiftlet run {kind}: FAILED: {error}", file=sys.stderr)
                    row["loadavg"] = loadavg()
                    run_rows.append(row)
            else:
                print(f"swiftlet run rows skipped: {run_note}", file=sys.stderr)
        else:
            run_note = "skipped with --no-swiftlet-run"
    load_end = loadavg()

    tmp = args.tmp or tempfile.gettempdir()
    meta = {"started": started, "machine": machine_notes(args), "guest_name": guest.name, "memory": args.memory,
            "runs": args.runs, "tmp": f"{tmp} ({filesystem(tmp)})", "load_start": load_start, "load_end": load_end,
            "produced_by": args.produced_by}
    text = report(meta, results, failures, run_rows, run_note)
    print(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({
            "meta": meta, "guest": str(guest), "cmdline": setup.cmdline, "results": results,
            "swiftlet_run": run_rows, "swiftlet_run_note": run_note, "failures": failures}, indent=2))
    if args.write:
        write_section(text, pathlib.Path(args.write))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
