#!/usr/bin/env bash
# Runs every test against the real peers, installing them first. A missing peer fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
export VHOST_E2E_REQUIRED=1
swift build --build-tests
swift test --skip-build --no-parallel
