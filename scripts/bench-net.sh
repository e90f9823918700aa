#!/usr/bin/env bash
# bench-net.sh [SECONDS] [ROUNDS]: 64-byte packets, one queue, release build, DPDK 22.11 testpmd
# (no hugepages) as the peer; each pair measured alternately A B A B in one run:
#   P1  testpmd virtio_user txonly -> testpmd vhost PMD rxonly   vs  -> `vhost-user net --forward rxonly --poll`
#       (rate: the virtio_user sender's Tx-pps, the same meter for both)
#   P2  testpmd vhost PMD txonly   vs  `vhost-user net --forward txonly --poll`  -> testpmd virtio_user rxonly
#       (rate: the virtio_user receiver's Rx-pps)
#   P3  testpmd virtio_user txonly vs  `vhost-user bench net`  -> testpmd vhost PMD rxonly
#       (rate: the vhost PMD receiver's Rx-pps)
# Two cores: every busy poller gets its own (testpmd's forwarding lcore 1 on core 1 or 0, ours via taskset).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-2}
swift build -c release --product vhost-user >/dev/null
bin=$(swift build -c release --show-bin-path)/vhost-user
D=/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0
dir=$(mktemp -d)
pgids=()
cleanup() {
  for g in "${pgids[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  sleep 0.5
  for g in "${pgids[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "logs kept in $dir" >&2 || rm -rf "$dir"
}
trap cleanup EXIT

# start NAME CMD...: runs CMD in its own process group (setsid), output to $dir/NAME.log; sets $last.
start() {
  local name=$1; shift
  setsid "$@" >"$dir/$name.log" 2>&1 &
  last=$!
  pgids+=("$last")
}
stop() { kill -TERM -- "-$1" 2>/dev/null || true; for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -KILL -- "-$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
testpmd() { # testpmd NAME LCORES VDEV FORWARD [extra...]
  local name=$1 lcores=$2 vdev=$3 fwd=$4; shift 4
  start "$name" dpdk-testpmd --lcores "$lcores" -d $D/librte_net_vhost.so -d $D/librte_net_virtio.so \
    -d $D/librte_mempool_ring.so --no-pci --no-huge -m 1024 --file-prefix="bn$name$$" --vdev "$vdev" -- \
    --total-num-mbufs=16384 --forward-mode="$fwd" --stats-period 1 "$@"
}
# testpmd's Rx-pps/Tx-pps read 0 here (no hugepages) and its per-second statistics come irregularly
# when its main lcore shares a core with a poller, so rates are measured from cumulative counts:
# t0/v0 when the first non-zero periodic count appears, the exit summary when the measured process
# is stopped at t1; rate = (final - v0) / (t1 - t0).
# first_count LOG FIELD: waits for the first non-zero periodic FIELD (RX-packets/TX-packets); sets t0, v0.
first_count() {
  local other; [ "$2" = RX-packets ] && other=RX-missed || other=TX-errors
  v0=0
  for _ in $(seq 400); do
    v0=$(grep "$2: *[0-9]* *$other" "$1" | awk '$2 > 0 {print $2}' | head -1)
    [ -n "$v0" ] && break
    sleep 0.05
  done
  t0=$(date +%s.%N)
  [ -n "$v0" ] || v0=0
}
# final_count LOG FIELD: the exit summary's FIELD of port 0.
final_count() {
  local other; [ "$2" = RX-packets ] && other=RX-dropped || other=TX-dropped
  grep "$2: *[0-9]* *$other" "$1" | awk '{print $2}' | head -1
}
# measure LOG FIELD PGID: lets it run for $secs after the flow starts, stops PGID, prints the rate.
measure() {
  first_count "$1" "$2"
  sleep "$secs"
  local t1; t1=$(date +%s.%N)
  stop "$3"
  local v1; v1=$(final_count "$1" "$2")
  awk -v a="$v0" -v b="${v1:-0}" -v t0="$t0" -v t1="$t1" 'BEGIN { if (a > 0 && b > a) printf "%.0f", (b - a) / (t1 - t0); else print 0 }'
}
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; echo "no socket $1" >&2; return 1; }

declare -A sum
vhost() { testpmd vh 0@0,1@1 "net_vhost0,iface=$dir/s.sock,queues=1" "$@"; vh=$last; wait_sock "$dir/s.sock"; }
virtio() { testpmd vu 0@1,1@0 "net_virtio_user0,path=$dir/s.sock,queues=1" "$@"; vu=$last; }
ours() { start ours taskset -c 1 "$bin" net --socket-path "$dir/s.sock" --poll --queues-per-thread 2 "$@"; our=$last; wait_sock "$dir/s.sock"; }
run_p1_dpdk() { rm -f "$dir/s.sock"; vhost rxonly; virtio txonly --txpkts=64; measure "$dir/vu.log" TX-packets "$vu"; stop "$vh"; }
run_p1_ours() { rm -f "$dir/s.sock"; ours --forward rxonly; virtio txonly --txpkts=64; measure "$dir/vu.log" TX-packets "$vu"; stop "$our"; }
run_p2_dpdk() { rm -f "$dir/s.sock"; vhost txonly --txpkts=64; virtio rxonly; measure "$dir/vu.log" RX-packets "$vu"; stop "$vh"; }
run_p2_ours() { rm -f "$dir/s.sock"; ours --forward txonly --txpkts 64; virtio rxonly; measure "$dir/vu.log" RX-packets "$vu"; stop "$our"; }
run_p3_dpdk() { rm -f "$dir/s.sock"; vhost rxonly; virtio txonly --txpkts=64; measure "$dir/vh.log" RX-packets "$vh"; stop "$vu"; }
run_p3_ours() {
  rm -f "$dir/s.sock"; vhost rxonly
  start bench taskset -c 0 "$bin" bench net --socket-path "$dir/s.sock" --seconds $((secs + 30)) --size 64; local b=$last
  measure "$dir/vh.log" RX-packets "$vh"; stop "$b"
}

for p in ${ONLY:-p1 p2 p3}; do
  sum[$p-dpdk]=0; sum[$p-ours]=0
  for r in $(seq "$rounds"); do
    for side in dpdk ours; do
      v=$(run_${p}_$side)
      echo "round $r ${p^^} $side: $v pps"
      sum[$p-$side]=$(( ${sum[$p-$side]} + v ))
    done
  done
  awk -v d="${sum[$p-dpdk]}" -v o="${sum[$p-ours]}" -v n="$rounds" -v p="${p^^}" 'BEGIN {
    printf "%s: DPDK %.2f Mpps, ours %.2f Mpps, ratio %.2fx\n", p, d / n / 1e6, o / n / 1e6, (d > 0 ? o / d : 0) }'
done
