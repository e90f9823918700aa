#!/usr/bin/env bash
# Runs every test against the real peers, installing them first. A missing peer fails the run.
# Then a short fuzzing smoke run of every target and the whole suite again under AddressSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
export VHOST_E2E_REQUIRED=1
# The arithmetic rule of SECURITY.md, and every product building on its own (no undeclared import).
bash scripts/lint-arithmetic.sh
swift build --build-tests --explicit-target-dependency-import-check error
# A package outside this one that builds a device on the public API (Examples/).
(cd Examples && swift build --build-tests && swift test --skip-build)
swift test --skip-build --no-parallel
bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
# The tool reports of docs/TOOLS.md, regenerated into a scratch directory: a QEMU guest through the
# tracer to qemu-storage-daemon and to our blk back-end, and `check` against every back-end.
reports=$(mktemp -d)
bash scripts/tool-reports.sh "$reports"
grep -h '^summary' "$reports"/check-*.txt
for f in "$reports"/check-ours-*.txt; do grep -q '^summary: .* 0 failed' "$f" || { echo "FAIL: $f"; exit 1; }; done
# The blk benchmark against qemu-storage-daemon, same image, same settings, one run (figures only:
# performance is judged from BENCHMARKS.md runs, not asserted here).
bash scripts/bench-blk.sh "${BENCH_SECONDS:-2}" 1
# The net benchmarks P1-P3 against DPDK testpmd (release build, one short round; figures only).
bash scripts/bench-net.sh "${BENCH_SECONDS:-2}" 1
# ThreadSanitizer over the concurrency tests (back-end workers, front-end channels, the tracer's relay).
# Locks are pthread mutexes (VhostSystem.Lock/Locked), which TSan understands; any report fails the run.
if [ "${SKIP_TSAN:-0}" != 1 ]; then
  swift build --build-tests --sanitize=thread --scratch-path .build-tsan
  TSAN_OPTIONS="halt_on_error=1" swift test --skip-build --sanitize=thread --scratch-path .build-tsan --no-parallel \
    --filter 'BackendTests|VhostFrontendTests|TraceRelay'
fi
if [ "${SKIP_ASAN:-0}" != 1 ]; then
  # XCTest's own allocations trip LeakSanitizer; leaks are checked by the fd/RSS soak tests instead.
  ASAN_OPTIONS=detect_leaks=0 swift test --sanitize=address --scratch-path .build-asan --no-parallel
fi
