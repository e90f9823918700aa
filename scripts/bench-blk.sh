#!/usr/bin/env bash
# bench-blk.sh [SECONDS] [ROUNDS]: `vhost-user bench blk` (release build) against qemu-storage-daemon
# and against our blk back-end on the same page-cached image, alternating A B A B, then the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-2}
# The deployment build (README): one static executable (Swift runtime and glibc linked in, lld);
# Foundation is not linked at all (only FoundationEssentials, through swift-argument-parser).
build=(-c release --static-swift-stdlib -Xswiftc -static-executable -Xswiftc -use-ld=lld --scratch-path .build-static)
swift build "${build[@]}" --product vhost-user >/dev/null
bin=$(swift build "${build[@]}" --show-bin-path)/vhost-user
dir=$(mktemp -d)
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
pids=()
trap cleanup EXIT
dd if=/dev/urandom of="$dir/disk.img" bs=1M count=256 status=none
cat "$dir/disk.img" >/dev/null  # page-cached
"$bin" blk --socket-path "$dir/ours.sock" --blk-file "$dir/disk.img" &
pids+=($!)
qemu-storage-daemon --blockdev "driver=file,node-name=d0,filename=$dir/disk.img" \
  --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$dir/qsd.sock,writable=on" >"$dir/qsd.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -S "$dir/ours.sock" ] && [ -S "$dir/qsd.sock" ] && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
echo "idle RSS (kB): ours $(rss "${pids[0]}"), qemu-storage-daemon $(rss "${pids[1]}")"
for rw in randread randwrite; do
  q=0; o=0
  for r in $(seq "$rounds"); do
    a=$("$bin" bench blk --socket-path "$dir/qsd.sock" --rw $rw --bs 4096 --iodepth 32 --seconds "$secs" --json)
    b=$("$bin" bench blk --socket-path "$dir/ours.sock" --rw $rw --bs 4096 --iodepth 32 --seconds "$secs" --json)
    echo "round $r $rw qemu-storage-daemon: $a"
    echo "round $r $rw ours:                $b"
    iops() { sed -E 's/.*"iops":([0-9.]+).*/\1/' <<<"$1"; }
    q=$(awk -v a="$q" -v b="$(iops "$a")" 'BEGIN { print a + b }')
    o=$(awk -v a="$o" -v b="$(iops "$b")" 'BEGIN { print a + b }')
  done
  awk -v q="$q" -v o="$o" -v n="$rounds" -v rw="$rw" 'BEGIN {
    printf "%s 4KiB iodepth 32: qemu-storage-daemon %.0f IOPS, ours %.0f IOPS, ratio %.2fx\n", rw, q / n, o / n, o / q }'
done
