#!/usr/bin/env bash
# Boot one guest-kit program under QEMU (microvm by default) and judge its
# output.
#
#   guest-kit/run-in-qemu.sh NAME [extra qemu args...]
#
# Environment (all optional):
#   KIT_MACHINE  QEMU machine            (default: microvm, microvm,pcie=on for the
#                                         virtio programs; e.g. pc, q35)
#   KIT_CPU      QEMU -cpu               (default: host,-arch-capabilities)
#   KIT_MEM      guest memory            (default: 128M)
#   KIT_SMP      vCPUs                   (default: 1)
#   KIT_APPEND   kernel command line     (e.g. "iterations=1000", "mode=exception")
#   KIT_TIMEOUT  seconds before the run is killed (default: 120)
#   QEMU         QEMU binary             (default: qemu-system-x86_64)
#
# The guest's serial console goes to stdout. -no-reboot makes a reset (the
# reboot program, a triple fault) end QEMU instead of booting again.
# Exit status: 0 when the program's expected outcome was seen (PASS; for
# `reboot` a reset; for `fault` a KVM_EXIT_SHUTDOWN, seen through QEMU's
# kvm_run_exit trace event), 1 on FAIL or a wrong outcome, 124 on timeout,
# 2 on usage or build errors.
set -u

here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ]; then
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
name=$1
shift
elf="$here/build/$name.elf"
if [ ! -f "$elf" ]; then
    echo "run-in-qemu: $elf missing; building" >&2
    "$here/build.sh" >&2 || exit 2
fi
[ -f "$elf" ] || { echo "run-in-qemu: no program named '$name'" >&2; exit 2; }

qemu=${QEMU:-qemu-system-x86_64}
command -v "$qemu" >/dev/null || { echo "run-in-qemu: $qemu not found (Debian package: qemu-system-x86)" >&2; exit 2; }

# The virtio programs need a PCI bus: microvm's PCIe host (ECAM, no firmware,
# so the kit assigns the BARs itself). Devices come as extra QEMU arguments,
# e.g. -device virtio-rng-pci,disable-legacy=on.
case $name in
virtio-*|blk-bench|net-bench) machine=${KIT_MACHINE:-microvm,pcie=on} ;;
*) machine=${KIT_MACHINE:-microvm} ;;
esac
args=(-M "$machine" -accel kvm -cpu "${KIT_CPU:-host,-arch-capabilities}"
      -m "${KIT_MEM:-128M}" -smp "${KIT_SMP:-1}"
      -nodefaults -no-user-config -nographic -serial stdio -no-reboot
      -kernel "$elf")
[ -n "${KIT_APPEND:-}" ] && args+=(-append "$KIT_APPEND")

log=$(mktemp)
trace=$(mktemp)
trap 'rm -f "$log" "$trace"' EXIT
# For `fault`, record KVM exit reasons: a triple fault is KVM_EXIT_SHUTDOWN (8).
[ "$name" = fault ] && args+=(-trace kvm_run_exit -D "$trace")
start=$(date +%s.%N)
timeout --foreground -k 5 "${KIT_TIMEOUT:-120}" "$qemu" "${args[@]}" "$@" </dev/null | tee "$log"
status=${PIPESTATUS[0]}
end=$(date +%s.%N)
# QEMU's own banner (SeaBIOS on pc/q35) contains escape sequences: judge only KIT lines.
kit=$(tr -d '\r' <"$log" | grep -a '^KIT ' || true)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
echo "run-in-qemu: $name machine=$machine qemu_status=$status seconds=$secs" >&2

if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "run-in-qemu: timeout" >&2
    exit 124
fi
case $name in
reboot)
    # A reset ends QEMU (-no-reboot) right after the request.
    grep -qx 'KIT reboot requested' <<<"$kit" && ! grep -q '^KIT reboot failed' <<<"$kit" && exit 0
    exit 1 ;;
fault)
    if grep -q '^KIT fault about to triple-fault' <<<"$kit"; then
        grep -q '^KIT fault FAIL' <<<"$kit" && exit 1
        if grep -q 'reason 8$' "$trace"; then
            echo "run-in-qemu: triple fault seen (KVM_EXIT_SHUTDOWN)" >&2
            exit 0
        fi
        echo "run-in-qemu: no KVM_EXIT_SHUTDOWN in the trace" >&2
        exit 1
    fi
    grep -qx 'KIT fault PASS' <<<"$kit" && exit 0
    exit 1 ;;
*)
    grep -qx "KIT $name PASS" <<<"$kit" && exit 0
    exit 1 ;;
esac
