#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end tests (as root, in network
# namespaces they create and remove).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --workspace --bins
cargo test --workspace -- --test-threads="${CVPN_TEST_THREADS:-2}"
