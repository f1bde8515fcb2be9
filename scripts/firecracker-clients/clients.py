#!/usr/bin/env python3
"""Drives swiftlet-vmm, installed under the name `firecracker`, with real
Firecracker client libraries from PyPI (pinned in requirements.txt).

Each flow uses a client's own code for everything it does with Firecracker
(launching the process, every API request, pause/resume, teardown) and checks
the result through the API independently. Only what a flow needs from the
world outside Firecracker is replaced: Docker (image builds), the public IP
lookup (port forwarding) and file locations. The guest is the guest kit's
`idle` program, which boots in milliseconds and runs until stopped.

Run by scripts/firecracker-clients/run inside a network namespace it creates
(flows make TAP devices and nftables rules). Prints one line per flow,
"PASS", "FAIL" (with the reason) or "SKIP" (a route another piece of work
adds is missing), then "firecracker-clients: N passed, N failed, N skipped".
Exit status 1 if any flow failed.
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ARGS = None
RESULTS = []
FLOWS = []


def flow(name):
    def register(function):
        FLOWS.append((name, function))
        return function
    return register


class Skip(Exception):
    pass


# -- independent checks over the API socket ----------------------------------

class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def api(sock, method, path, body=None):
    """(status, decoded JSON or None) for one request."""
    connection = _UnixConnection(str(sock))
    try:
        data = json.dumps(body) if body is not None else None
        connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        raw = response.read().decode()
        return response.status, (json.loads(raw) if raw else None)
    finally:
        connection.close()


def state(sock):
    status, info = api(sock, "GET", "/")
    assert status == 200, f"GET / answered {status}"
    return info["state"]


def wait_until(condition, seconds=20, what="condition"):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_exit(pid, seconds=20):
    def gone():
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().split()[2] == "Z"
        except (ProcessLookupError, FileNotFoundError):
            return True
    wait_until(gone, seconds, f"process {pid} to exit")


def route_missing(method, path, body):
    """Whether this build refuses the route as unknown (work not merged yet)."""
    sock = Path(ARGS.workdir) / "probe.sock"
    # A previous probe's socket may outlive its process: wait for this one's.
    sock.unlink(missing_ok=True)
    process = subprocess.Popen([ARGS.firecracker, "--api-sock", str(sock), "--id", "probe"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: sock.exists(), 10, "the probe socket")
        # The file appears at bind(), a moment before listen().
        for _ in range(100):
            try:
                status, reply = api(sock, method, path, body)
                break
            except ConnectionRefusedError:
                time.sleep(0.02)
        else:
            raise AssertionError("the probe socket never accepted a connection")
        return status == 400 and "Invalid request method and/or path" in (reply or {}).get("fault_message", "")
    finally:
        process.terminate()
        process.wait(10)


def make_tap(name):
    subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)


def delete_tap(name):
    subprocess.run(["ip", "link", "del", name], stderr=subprocess.DEVNULL)


# -- firecracker-python (PyPI: firecracker-python, package `firecracker`) ----

def firecracker_python():
    """Points the library at our files and stubs what is not Firecracker's."""
    import firecracker.config
    import firecracker.microvm
    import firecracker.network
    import firecracker.process
    import firecracker.vmm

    data = Path(ARGS.workdir) / "firecracker-python"
    data.mkdir(parents=True, exist_ok=True)

    @dataclass
    class Config(firecracker.config.MicroVMConfig):
        data_path: str = str(data)
        binary_path: str = ARGS.firecracker
        snapshot_path: str = str(data / "snapshots")

    for module in (firecracker.microvm, firecracker.process, firecracker.vmm, firecracker.network):
        module.MicroVMConfig = Config
    # Used only to build root file systems from images and for port forwarding.
    firecracker.microvm.docker.from_env = lambda *args, **kwargs: None
    firecracker.microvm.get_public_ip = lambda *args, **kwargs: "127.0.0.1"
    return firecracker.microvm.MicroVM, data


def firecracker_python_vm(**options):
    MicroVM, data = firecracker_python()
    vm = MicroVM(kernel_file=ARGS.kernel, base_rootfs=ARGS.rootfs, vcpu=1, memory=128, verbose=bool(os.environ.get("SWIFTLET_FC_CLIENTS_VERBOSE")), **options)
    try:
        result = vm.create()
    except Exception as error:
        raise AssertionError(f"create() raised {error!r}; firecracker.log: {fc_log(data, vm._microvm_id)}") from error
    assert result == f"VMM {vm._microvm_id} created", f"create(): {result!r}; log: {fc_log(data, vm._microvm_id)}"
    return vm, data / vm._microvm_id / "firecracker.socket"


def fc_log(data, vm_id):
    try:
        return (data / vm_id / "firecracker.log").read_text()[-2000:]
    except OSError:
        return ""


def firecracker_python_teardown(vm, sock):
    pid = int((Path(sock).parent / "firecracker.pid").read_text())
    assert vm.delete() == f"VMM {vm._microvm_id} is deleted"
    wait_for_exit(pid)
    assert not Path(sock).exists(), "the socket is gone after delete()"


@flow("firecracker-python 0.0.5: create, list, config, pause, resume, delete")
def firecracker_python_basic():
    vm, sock = firecracker_python_vm()
    try:
        assert state(sock) == "Running"
        listed = {entry["id"]: entry for entry in type(vm).list()}
        assert vm._microvm_id in listed, f"list(): {listed}"
        config = vm.config()
        assert config["boot-source"]["kernel_image_path"] == ARGS.kernel, config
        assert config["drives"][0]["drive_id"] == "rootfs" and config["drives"][0]["is_root_device"] is True, config
        assert config["network-interfaces"][0]["host_dev_name"] == f"tap_{vm._microvm_id}", config
        assert config["machine-config"]["mem_size_mib"] == 128, config
        assert vm.pause() == f"VMM {vm._microvm_id} paused successfully"
        assert state(sock) == "Paused"
        assert vm.resume() == f"VMM {vm._microvm_id} resumed successfully"
        assert state(sock) == "Running"
        status, version = api(sock, "GET", "/version")
        assert status == 200 and "firecracker_version" in version, version
    finally:
        firecracker_python_teardown(vm, sock)


@flow("firecracker-python 0.0.5: snapshot(action='create'), kill, snapshot(action='load') in a fresh firecracker")
def firecracker_python_snapshot():
    if route_missing("PUT", "/snapshot/load", {"snapshot_path": "/nonexistent", "mem_file_path": "/nonexistent"}):
        raise Skip("PUT /snapshot/load is not served by this build")
    vm, sock = firecracker_python_vm()
    MicroVM, data = firecracker_python()
    clone = None
    try:
        # The client pauses, creates and resumes.
        vm.snapshot(action="create")
        assert state(sock) == "Running"
        memory, snapshot = Path(vm._mem_file_path), Path(vm._snapshot_path)
        assert memory.stat().st_size == 128 << 20, memory.stat()
        assert snapshot.stat().st_size > 0
        # The original goes away (its disk stays: the clone reopens it).
        os.kill(int((Path(sock).parent / "firecracker.pid").read_text()), signal.SIGKILL)
        clone = MicroVM(kernel_file=ARGS.kernel, base_rootfs=ARGS.rootfs, vcpu=1, memory=128)
        # What create() does before configuring: the tap, then the process.
        clone._network.setup(tap_name=clone._host_dev_name, iface_name=clone._iface_name, gateway_ip=clone._gateway_ip)
        clone._run_firecracker()
        clone_sock = data / clone._microvm_id / "firecracker.socket"
        # enable_diff_snapshots, resume_vm and a network override, as the client sends them.
        clone.snapshot(action="load", memory_path=str(memory), snapshot_path=str(snapshot))
        assert state(clone_sock) == "Running"
        status, config = api(clone_sock, "GET", "/vm/config")
        assert status == 200 and config["machine-config"]["mem_size_mib"] == 128, config
        # The client's pause()/resume() need the bookkeeping create() writes; the routes themselves:
        assert api(clone_sock, "PATCH", "/vm", {"state": "Paused"})[0] == 204 and state(clone_sock) == "Paused"
        assert api(clone_sock, "PATCH", "/vm", {"state": "Resumed"})[0] == 204 and state(clone_sock) == "Running"
    finally:
        # delete() knows only VMs create() made: the clone's process and tap go by hand.
        if clone is not None:
            pid_file = data / clone._microvm_id / "firecracker.pid"
            if pid_file.exists():
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGTERM)
                wait_for_exit(pid)
            delete_tap(clone._host_dev_name)
        # The original was killed: delete() no longer lists it, so its tap goes by hand too.
        vm.delete()
        delete_tap(vm._host_dev_name)


@flow("firecracker-python 0.0.5: create(vsock_enabled=True)")
def firecracker_python_vsock():
    if route_missing("PUT", "/vsock", {"guest_cid": 3, "uds_path": str(Path(ARGS.workdir) / "probe.vsock")}):
        raise Skip("PUT /vsock is not served by this build (virtio-vsock: helper-vsock's work)")
    vm, sock = firecracker_python_vm(vsock_enabled=True)
    try:
        config = vm.config()
        assert config["vsock"]["guest_cid"] == 3, config
        assert config["vsock"]["uds_path"] == vm._vsock_uds_path, config
        assert state(sock) == "Running"
        wait_until(lambda: Path(vm._vsock_uds_path).exists(), 10, "the vsock socket")
    finally:
        firecracker_python_teardown(vm, sock)


@flow("firecracker-python 0.0.5: create(mmds_enabled=True)")
def firecracker_python_mmds():
    if route_missing("PUT", "/mmds/config", {"network_interfaces": ["eth0"]}):
        raise Skip("PUT /mmds/config is not served by this build (MMDS: helper-mmds's work)")
    vm, sock = firecracker_python_vm(mmds_enabled=True, user_data="#cloud-config\n")
    try:
        status, store = api(sock, "GET", "/mmds")
        assert status == 200 and store["latest"]["meta-data"]["instance-id"] == vm._microvm_id, store
        config = vm.config()
        assert config["mmds-config"]["version"] == "V2", config
        assert state(sock) == "Running"
    finally:
        firecracker_python_teardown(vm, sock)


# -- smolvm (PyPI: smolvm; its Firecracker API client) ------------------------

@flow("smolvm 0.0.36: FirecrackerClient boot, info, replayed start, pause, resume, Ctrl-Alt-Del")
def smolvm_flow():
    from smolvm.api import FirecrackerClient
    from smolvm.exceptions import FirecrackerAPIError

    workdir = Path(ARGS.workdir) / "smolvm"
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "fc.sock"
    log = open(workdir / "fc.log", "w")
    # The command line smolvm's SmolVM._start_firecracker uses.
    process = subprocess.Popen([ARGS.firecracker, "--api-sock", str(sock)], stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    tap = "smoltap0"
    make_tap(tap)
    try:
        client = FirecrackerClient(sock)
        client.wait_for_socket(10)
        client.set_boot_source(Path(ARGS.kernel))
        client.set_machine_config(vcpu_count=2, mem_size_mib=128)
        client.add_drive("rootfs", Path(ARGS.rootfs))
        client.add_network_interface("eth0", tap, "02:fc:00:00:00:01")
        client.start_instance()
        assert client.get_instance_info()["state"] == "Running"
        try:
            client.start_instance()
            raise AssertionError("a second InstanceStart was accepted")
        except FirecrackerAPIError as error:
            # smolvm recognises an already-started VM by Firecracker's words.
            from smolvm.api import _instance_start_already_succeeded
            assert _instance_start_already_succeeded(str(error)), str(error)
        client.pause_vm()
        assert client.get_instance_info()["state"] == "Paused"
        client.resume_vm()
        assert client.get_instance_info()["state"] == "Running"
        client.send_ctrl_alt_del()
    finally:
        process.terminate()
        process.wait(20)
        log.close()
        delete_tap(tap)
    assert process.returncode == 4, f"SIGTERM ends the VMM with status 4, not {process.returncode}"


# -- bandsox (PyPI: bandsox; its MicroVM process wrapper and FirecrackerClient)

@flow("bandsox 3.5: start_process, configure (Async drive, entropy limiter, vsock by id), start, pause, resume")
def bandsox_flow():
    from bandsox.vm import MicroVM

    workdir = Path(ARGS.workdir) / "bandsox"
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "fc.sock"
    vm = MicroVM("bandsox1", str(sock), firecracker_bin=ARGS.firecracker)
    vm.start_process()
    tap = "bandtap0"
    make_tap(tap)
    try:
        client = vm.client
        client.put_boot_source(ARGS.kernel, "console=ttyS0 reboot=k panic=1 pci=off")
        client.put_machine_config(1, 128)
        client.put_drives("rootfs", ARGS.rootfs, is_root_device=True)  # io_engine "Async"
        client.put_network_interface("eth0", tap, "02:fc:00:00:00:02")
        client.put_entropy()  # with a bandwidth rate limiter
        if not route_missing("PUT", "/vsock", {"guest_cid": 3, "uds_path": str(workdir / "probe.vsock")}):
            client.put_vsock("vsock0", 3, str(workdir / "v.sock"))  # PUT /vsock/vsock0 with the deprecated vsock_id
        client.instance_start()
        wait_until(lambda: state(sock) == "Running", 10, "Running")
        config = api(sock, "GET", "/vm/config")[1]
        assert config["drives"][0]["io_engine"] == "Async", config
        assert config["entropy"]["rate_limiter"]["bandwidth"]["size"] == 1048576, config
        client.pause_vm()
        assert state(sock) == "Paused"
        client.resume_vm()
        assert state(sock) == "Running"
        # The guest's console reaches bandsox's stdout reader.
        lines = []
        vm.multiplexer.add_callback(lines.append)
        wait_until(lambda: any("KIT idle tick" in line for line in lines), 10, "console output")
    finally:
        pid = vm.process.pid
        vm.process.terminate()
        wait_for_exit(pid)
        vm.multiplexer.stop()
        delete_tap(tap)


@flow("microheart 0.3.0: its launch (--api-sock, --config-file, --enable-pci) and GET /machine-config")
def microheart_flow():
    help_text = subprocess.run([ARGS.firecracker, "--help"], capture_output=True, text=True).stdout
    if "--enable-pci" not in help_text:
        raise Skip("--enable-pci is not accepted by this build (virtio-mmio/PCI choice: helper-mmio's work)")
    from microheart import api as microheart_api

    workdir = Path(ARGS.workdir) / "microheart"
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "firecracker.socket"
    tap = "hearttap0"
    make_tap(tap)
    config = {  # microheart's MicroVM.config() layout
        "boot-source": {"kernel_image_path": ARGS.kernel, "boot_args": "console=ttyS0 reboot=k panic=1 microheart.name=t"},
        "drives": [{"drive_id": "rootfs", "path_on_host": ARGS.rootfs, "is_root_device": True, "is_read_only": False}],
        "network-interfaces": [{"iface_id": "net1", "guest_mac": "06:00:ac:10:00:02", "host_dev_name": tap}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    }
    (workdir / "vm_config.json").write_text(json.dumps(config))
    with open(workdir / "console.log", "w") as log:
        process = subprocess.Popen([ARGS.firecracker, "--api-sock", str(sock), "--config-file", str(workdir / "vm_config.json"),
                                    "--enable-pci"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    try:
        wait_until(lambda: sock.exists(), 10, "the API socket")
        machine = microheart_api.request(str(sock), "GET", "/machine-config")
        assert machine["mem_size_mib"] == 128, machine
        assert state(sock) == "Running"
    finally:
        process.terminate()
        process.wait(20)
        delete_tap(tap)


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--firecracker", required=True, help="swiftlet-vmm under the name firecracker")
    parser.add_argument("--kernel", required=True, help="the guest kit's idle.elf")
    parser.add_argument("--rootfs", required=True, help="a raw image for the root drive")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--only", help="run only flows whose name contains this")
    ARGS = parser.parse_args()
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    for name, function in FLOWS:
        if ARGS.only and ARGS.only not in name:
            continue
        started = time.time()
        try:
            function()
            outcome, detail = "PASS", ""
        except Skip as reason:
            outcome, detail = "SKIP", f": {reason}"
        except Exception as error:  # noqa: BLE001 - every failure is reported, then the next flow runs
            outcome, detail = "FAIL", f": {error!r}\n{traceback.format_exc()}"
        counts[outcome] += 1
        print(f"{outcome} {name} ({time.time() - started:.1f} s){detail}", flush=True)
    print(f"firecracker-clients: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped", flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
