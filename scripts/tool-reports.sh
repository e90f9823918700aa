#!/usr/bin/env bash
# tool-reports.sh [OUTDIR]: regenerates the example traces and conformance reports in docs/examples.
#  - trace-qemu-qsd.txt / trace-qemu-ours-blk.txt: a QEMU 7.2 guest (TCG) writes and reads 4 MiB on a
#    vhost-user-blk disk served by qemu-storage-daemon / by `vhost-user blk`, through `vhost-user trace`.
#  - check-*.txt: `vhost-user check` against qemu-storage-daemon, DPDK testpmd's vhost PMD and each of
#    our back-ends (blk, net rxonly, rng).
# Needs the peers (scripts/install-peers.sh) and a built `vhost-user` (swift build).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/examples}
mkdir -p "$out"
bin=${VHOST_USER_BIN:-$(swift build --show-bin-path)/vhost-user}
[ -x "$bin" ] || { echo "build first: swift build" >&2; exit 1; }
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

wait_socket() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; return 1; }
start() { setsid "$@" & pids+=($!); }
stop_all() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  pids=()
}

kernel=$(ls /boot/vmlinuz-* | sort -V | tail -1)
cat >"$tmp/test.sh" <<'EOF'
dd if=/dev/urandom of=/tmp/data bs=1M count=4 2>/dev/null
echo "DATA-MD5 $(md5sum < /tmp/data)"
dd if=/tmp/data of=/dev/vda bs=1M count=4 oflag=direct 2>/dev/null || echo WRITE-FAILED
dd if=/dev/vda of=/tmp/back bs=1M count=4 iflag=direct 2>/dev/null || echo READ-FAILED
echo "BACK-MD5 $(md5sum < /tmp/back)"
EOF
bash scripts/make-initramfs.sh "$tmp/initramfs.gz" "$tmp/test.sh"

guest() { # guest SOCKET LOG
  timeout 240 qemu-system-x86_64 -accel tcg -m 256 -smp 1 \
    -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \
    -kernel "$kernel" -initrd "$tmp/initramfs.gz" -append "console=ttyS0 panic=-1 quiet" \
    -display none -serial stdio -monitor none -no-reboot -nic none \
    -chardev "socket,id=c0,path=$1" -device vhost-user-blk-pci,chardev=c0 >"$2" 2>&1
  local data back
  data=$(grep -a '^DATA-MD5' "$2" | awk '{print $2}')
  back=$(grep -a '^BACK-MD5' "$2" | awk '{print $2}')
  if [ -n "$data" ] && [ "$data" = "$back" ]; then echo "guest: data read back matches ($data)"; else
    echo "guest: FAILED (data=$data back=$back)"; tail -20 "$2"; return 1
  fi
}

status=0
# 1. QEMU guest → tracer → qemu-storage-daemon
truncate -s 64M "$tmp/qsd.img"
start qemu-storage-daemon --blockdev "driver=file,node-name=d0,filename=$tmp/qsd.img" \
  --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$tmp/qsd.sock,writable=on"
wait_socket "$tmp/qsd.sock"
start "$bin" trace --listen "$tmp/t.sock" --connect "$tmp/qsd.sock" --log "$out/trace-qemu-qsd.txt"
wait_socket "$tmp/t.sock"
guest "$tmp/t.sock" "$tmp/guest-qsd.log" || status=1
stop_all
rm -f "$tmp"/*.sock

# 2. QEMU guest → tracer → our blk back-end
truncate -s 64M "$tmp/ours.img"
start "$bin" blk --socket-path "$tmp/ours.sock" --blk-file "$tmp/ours.img"
wait_socket "$tmp/ours.sock"
start "$bin" trace --listen "$tmp/t.sock" --connect "$tmp/ours.sock" --log "$out/trace-qemu-ours-blk.txt"
wait_socket "$tmp/t.sock"
guest "$tmp/t.sock" "$tmp/guest-ours.log" || status=1
stop_all
rm -f "$tmp"/*.sock

check() { # check NAME SOCKET [DEVICE]
  local dev=()
  [ -n "${3:-}" ] && dev=(--device "$3")
  "$bin" check --socket-path "$2" "${dev[@]}" >"$out/check-$1.txt" 2>&1
  echo "check $1: exit $? — $(tail -1 "$out/check-$1.txt")"
}

# 3. vhost-user check against each back-end
start qemu-storage-daemon --blockdev "driver=file,node-name=d0,filename=$tmp/qsd.img" \
  --export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$tmp/qsd.sock,writable=on"
wait_socket "$tmp/qsd.sock" && check qemu-storage-daemon "$tmp/qsd.sock" blk
stop_all
D=$(ls -d /usr/lib/x86_64-linux-gnu/dpdk/pmds-* | head -1)
start dpdk-testpmd --lcores 0@0,1@1 -d "$D/librte_net_vhost.so" -d "$D/librte_mempool_ring.so" --no-pci --no-huge \
  -m 1024 --file-prefix=vhcheck --vdev "net_vhost0,iface=$tmp/dpdk.sock,queues=1" -- --total-num-mbufs=16384 \
  --forward-mode=rxonly --stats-period 1 >"$tmp/testpmd.log" 2>&1
wait_socket "$tmp/dpdk.sock" && check dpdk-vhost-pmd "$tmp/dpdk.sock" net
stop_all
start "$bin" blk --socket-path "$tmp/b.sock" --blk-file "$tmp/ours.img"
wait_socket "$tmp/b.sock" && check ours-blk "$tmp/b.sock" blk
stop_all
start "$bin" net --socket-path "$tmp/n.sock" --forward rxonly
wait_socket "$tmp/n.sock" && check ours-net "$tmp/n.sock" net
stop_all
start "$bin" rng --socket-path "$tmp/r.sock"
wait_socket "$tmp/r.sock" && check ours-rng "$tmp/r.sock" rng
stop_all
exit $status
