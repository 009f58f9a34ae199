#!/usr/bin/env bash
# The kernel matrix: boots Debian's cloud kernels under qemu (software emulation, one VM at a
# time) with an initramfs of busybox, the periscope binary and the test workloads, and reports
# one line per kernel per family: the mechanism that attached and whether the smoke counts
# matched (init.sh). Exits non-zero when any kernel fails, after printing every kernel's lines
# and the `periscope check` FAIL lines (which carry the verifier's message).
#
# usage: tests/kernels/run.sh [SUITE...]   (default: bullseye bookworm bookworm-backports)
# env:   PERISCOPE_BIN (default target/debug/periscope), WORKLOAD_BIN
#        (default target/debug/kernel-workload), KERNEL_CACHE (default target/kernels),
#        KERNEL_VM_TIMEOUT seconds per VM (default 900), KERNEL_VM_CPU (qemu -cpu, see vm_cpu),
#        KERNEL_VM_QUIET (kernel messages: set it empty to see them all)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tests/kernels

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(bullseye bookworm bookworm-backports)
periscope=${PERISCOPE_BIN:-target/debug/periscope}
workload=${WORKLOAD_BIN:-target/debug/kernel-workload}
cache=${KERNEL_CACHE:-target/kernels}
vm_timeout=${KERNEL_VM_TIMEOUT:-900}
for bin in "$periscope" "$workload"; do
  [ -x "$bin" ] || { echo "kernel matrix: $bin is not built (cargo build -p periscope -p periscope-e2e)" >&2; exit 1; }
done
for tool in qemu-system-x86_64 busybox; do
  command -v "$tool" >/dev/null || { echo "kernel matrix: $tool is missing (bash .ci/setup.sh installs it)" >&2; exit 1; }
done

# The modules a VM needs for its virtio disk, decompressed (busybox insmod takes plain ones),
# and their load order (dependencies first) from each module's own `depends=` (the kernel
# package ships no modules.dep; depmod is not needed). A module not found is built in.
copy_modules() {
  local moddir=$1 out=$2 seen=" " name
  mkdir -p "$out/modules"
  : > "$out/modules/order"
  add() {
    local name=${1//-/_} path dep
    case $seen in *" $name "*) return ;; esac
    seen+="$name "
    path=$(find "$moddir/kernel" -name "$name.ko*" -o -name "${name//_/-}.ko*" | head -n1)
    [ -n "$path" ] || return 0
    case $path in
      *.xz) xz -dc "$path" ;; *.zst) zstd -qdc "$path" ;; *.gz) gzip -dc "$path" ;; *) cat "$path" ;;
    esac > "$out/modules/$name.ko"
    for dep in $(tr '\0' '\n' < "$out/modules/$name.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
      add "$dep"
    done
    echo "$name.ko" >> "$out/modules/order"
  }
  for name in virtio_pci virtio_blk; do add "$name"; done
}

# busybox, periscope and the workload with the libraries ldd names, and init.sh as /init.
build_initramfs() {
  local moddir=$1 image=$2 root
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,etc}
  cp "$(command -v busybox)" "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  cp "$periscope" "$root/bin/periscope"
  cp "$workload" "$root/bin/kernel-workload"
  local lib
  for lib in $(ldd "$periscope" "$workload" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*[^:]$/ { print $1 }' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  cp "$here/init.sh" "$root/init"
  copy_modules "$moddir" "$root"
  (cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$image"
  rm -rf "$root"
}

# The emulated CPU per suite. qemu 7.2's emulation of cmpxchg16b corrupted 6.12's slab
# allocator at every boot here (list_add corruption or a double fault in kmem_cache_alloc, 3
# boots of 3, none with cx16=off); 5.10 hangs in `periscope check` without cmpxchg16b (2 of 2)
# and boots with it.
vm_cpu() {
  case $1 in
    bookworm-backports) echo max,cx16=off ;;
    *) echo max ;;
  esac
}

# Boots one kernel; its console goes to $log. stdin is /dev/null: with an inherited one qemu
# can hang. One CPU: 6.12 panics with two emulated ones.
boot() {
  local vmlinuz=$1 initrd=$2 log=$3 disk=$4 cpu=$5
  nice -n 10 timeout "$vm_timeout" qemu-system-x86_64 -accel tcg -cpu "$cpu" -smp 1 -m 1024 \
    -nodefaults -display none -no-reboot -serial "file:$log" \
    -kernel "$vmlinuz" -initrd "$initrd" -append "console=ttyS0 panic=-1 ${KERNEL_VM_QUIET-quiet}" \
    -drive "file=$disk,if=virtio,format=raw" < /dev/null
}

failed=0
summary=$(mktemp)
for suite in "${suites[@]}"; do
  start=$(date +%s)
  vmlinuz=$("$here/fetch-kernel.sh" "$suite" "$cache")
  release=${vmlinuz##*/vmlinuz-}
  dir="$cache/$suite"
  build_initramfs "$dir/root/lib/modules/$release" "$dir/initramfs.gz"
  truncate -s 64M "$dir/disk.img"
  log="$dir/console.log"
  rm -f "$log"
  boot "$vmlinuz" "$dir/initramfs.gz" "$log" "$dir/disk.img" "${KERNEL_VM_CPU:-$(vm_cpu "$suite")}" || echo "qemu exited with $? on $release" >> "$log"
  took=$(( $(date +%s) - start ))
  if ! grep -q '^MATRIX-END' "$log"; then
    echo "$release: the VM did not finish (see $log); last lines:" >&2
    tail -n 20 "$log" >&2
    echo "$release vm - FAIL the VM stopped before init.sh finished (panic, or ${vm_timeout}s timeout)" >> "$summary"
    failed=1
    continue
  fi
  tr -d '\r' < "$log" | awk -v k="$release" '/^MATRIX / { $1 = k; print }' >> "$summary"
  # Not `grep -q`: it quits at the first match, `tr` then dies of SIGPIPE, and under pipefail
  # the pipeline's failure would hide the match.
  if tr -d '\r' < "$log" | grep '^MATRIX .* FAIL ' > /dev/null; then
    failed=1
    echo "== $release: periscope check FAIL lines" >&2
    tr -d '\r' < "$log" | sed -n '/^===== periscope check/,/^===== check exit/p' | grep -A3 -E '^\s+FAIL|^Result' >&2 || true
  fi
  echo "$release smoke - info ${took}s for download, initramfs, boot, check and smoke set" >> "$summary"
done
echo "kernel family mechanism result detail"
cat "$summary"
rm -f "$summary"
exit $failed
