#!/usr/bin/env bash
# fuzz.sh SECONDS [TARGET...]: builds the libFuzzer targets and runs each for SECONDS, starting from
# the committed seed corpus (Fuzz/corpus/TARGET). Fails if any target crashes, leaks past the RSS
# limit or hangs (a single input taking more than 10 s). New inputs go to .fuzz-work/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode backend splitRing packedRing frontend devices inflight)
# Optimized (-O keeps Swift's bounds and overflow checks): 5-10x the executions of a debug build.
swift build -c release --product vhost-fuzz --sanitize fuzzer -Xswiftc -parse-as-library -Xswiftc -DFUZZING \
  --scratch-path .build-fuzz >/dev/null
bin=$(swift build -c release --sanitize fuzzer --scratch-path .build-fuzz --show-bin-path)/vhost-fuzz
export SWIFT_BACKTRACE=enable=no
status=0
for t in "${targets[@]}"; do
  work=.fuzz-work/$t
  mkdir -p "$work" .fuzz-work/artifacts
  if VHOST_FUZZ_TARGET=$t "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
    -artifact_prefix=.fuzz-work/artifacts/$t- "$work" "Fuzz/corpus/$t" >".fuzz-work/$t.log" 2>&1; then
    echo "fuzz $t: ok, $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' ".fuzz-work/$t.log" | tail -1)"
  else
    echo "fuzz $t: FAILED"
    grep -v "warning vhost-user" ".fuzz-work/$t.log" | grep -A30 -E "ERROR|timeout|crash" | head -60
    status=1
  fi
done
exit $status
