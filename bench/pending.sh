#!/usr/bin/env bash
# Pre-authentication memory: the gateway's resident memory before and with
# N OpenVPN handshakes pending over TCP, each having sent 60 KB of an
# unfinished TLS handshake message (rustls keeps up to 64 KiB) and the largest
# control packets the gateway takes, out of order so that they stay
# buffered (tests/src/bin/cvpn-e2e-ovpn.rs `pending`). Needs root.
#
#   bash bench/pending.sh [--count 1000] [--runs 3]
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=1000
RUNS=3
while (($#)); do
  case $1 in
    --count) COUNT=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "usage: $0 [--count N] [--runs R]" >&2; exit 2 ;;
  esac
done
source bench/lib.sh
source bench/systems.sh
bench_prepare cvpn-pending
"$BIN/cvpn-pki" --dir "$WORK/pki" init --cn "Pending CA" >/dev/null
"$BIN/cvpn-pki" --dir "$WORK/pki" issue server vpn.example.com --ip $GW_OUT >/dev/null
cvpn_config
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
per=()
for ((i = 0; i < RUNS; i++)); do
  start_cvpn_gateway
  pid=$(pgrep -f "cvpn-gw serve --config $WORK/endpoint.toml" | head -1)
  before=$(rss_kib "$pid")
  in_c "$BIN/cvpn-e2e-ovpn" pending --connect "$GW_OUT:443" --count "$COUNT" --hold 15 >"$WORK/pending.out" &
  load=$!
  for _ in $(seq 300); do grep -q '^pending' "$WORK/pending.out" && break; sleep 0.1; done
  # Let the gateway take in what was sent.
  sleep 3
  held=$(rss_kib "$pid")
  pending=$(awk '/^pending/ {print $2}' "$WORK/pending.out")
  kill "$load" 2>/dev/null || true
  wait "$load" 2>/dev/null || true
  stop_all
  per+=("$(awk -v a="$before" -v b="$held" -v n="$pending" 'BEGIN {printf "%.1f", (b - a) / n}')")
  echo "  run $((i + 1)): $pending pending, gateway RSS $before KiB before, $held KiB with them: ${per[-1]} KiB each" >&2
done
echo
echo "OpenVPN handshakes pending over TCP, each holding 60 KB of an unfinished TLS handshake message and 11 of the largest control packets out of order:"
echo "  KiB of gateway RSS per pending handshake: ${per[*]}: median $(median "${per[@]}")"
