#!/usr/bin/env bash
# soak-blk.sh [SECONDS]: mixed random I/O against our blk back-end (synchronous and with 4 I/O
# threads), every read checked against a model of the disk, the image verified at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export VHOST_SOAK_SECONDS=${1:-600}
swift build -c release --build-tests >/dev/null
swift test -c release --skip-build --filter BlkSoakTests 2>&1 | grep -E "soak|✔|✘"
