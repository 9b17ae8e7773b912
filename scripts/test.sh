#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end tests (as root, in network
# namespaces they create and remove).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# OpenVPN 3 core (OpenVPN Connect's engine) with OpenSSL and with mbed TLS,
# the interop peers of tests/tests/openvpn3.rs: built from the source
# snapshot in ../shared (Debian packages only), cached in /var/cache/cvpn-peers.
peers=../shared/peers/openvpn3/build.sh
if [[ -f $peers ]]; then
  bash "$peers" >/dev/null
else
  echo "no $peers: the OpenVPN 3 tests will say what is missing" >&2
fi
cargo build --workspace --bins
cargo test --workspace -- --test-threads="${CVPN_TEST_THREADS:-2}"
