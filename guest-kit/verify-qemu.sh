#!/usr/bin/env bash
# Run the guest-kit matrix under QEMU and print every run's KIT lines, QEMU
# status and wall time, then "N passed, N failed".
#   guest-kit/verify-qemu.sh [quick]      quick: exitloop with 1000 iterations
set -u
here=$(cd "$(dirname "$0")" && pwd)
"$here/build.sh" >/dev/null || exit 2
iters=""
[ "${1:-}" = quick ] && iters="iterations=1000"

pass=0 fail=0
run() {   # machine smp mem append name
    local machine=$1 smp=$2 mem=$3 append=$4 name=$5 out rc t0 t1
    t0=$(date +%s.%N)
    out=$(KIT_MACHINE=$machine KIT_SMP=$smp KIT_MEM=$mem KIT_APPEND=$append \
          "$here/run-in-qemu.sh" "$name" 2>&1)
    rc=$?
    t1=$(date +%s.%N)
    printf '### %s machine=%s smp=%s mem=%s append="%s" -> %s (%.2f s)\n' "$name" "$machine" "$smp" "$mem" \
        "$append" "$([ $rc = 0 ] && echo ok || echo "FAILED rc=$rc")" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')"
    tr -d '\r' <<<"$out" | grep -a -E '^(KIT |run-in-qemu: triple)' | sed 's/^/    /'
    if [ $rc = 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
}

for smp in 1 2; do
    for p in hello memmap acpi compute reboot fault; do
        run microvm $smp 128M "" $p
    done
    run microvm $smp 128M "mode=exception" fault
    run microvm $smp 128M "mode=breakpoint" fault
    run microvm $smp 128M "$iters" exitloop
done
for smp in 1 2 4; do run microvm $smp 128M "" smp; done
for mem in 512M 1G 3G 4G; do run microvm 1 $mem "" memmap; done
for machine in pc q35; do
    for smp in 1 2; do
        run $machine $smp 128M "" hello
        run $machine $smp 128M "" acpi
    done
    for p in memmap compute reboot fault smp; do run $machine 2 128M "" $p; done
    run $machine 1 128M "iterations=1000" exitloop
    run $machine 4 128M "" smp
done
# virtio-pci programs (rng, blk incl. hostile chains, net in a netns when
# root): their own runner, one line per case; counted as one entry here.
if command -v python3 >/dev/null; then
    echo "### virtio-check.py --vmm qemu"
    out=$(python3 "$here/virtio-check.py" --vmm qemu 2>&1)
    rc=$?
    sed 's/^/    /' <<<"$out"
    if [ $rc = 0 ]; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
    fi
fi
echo "$pass passed, $fail failed"
[ $fail = 0 ]
