#!/usr/bin/env bash
# Connects and sessions: full mutual-TLS handshakes per second, and the
# gateway's resident memory per idle session with thousands of sessions
# held, using cvpn-load (no tun device on the load side). Needs root.
#
#   bash bench/load.sh [--sessions N] [--handshakes N] [--concurrency C] [--runs R]
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=10000
HANDSHAKES=3000
CONCURRENCY=64
RUNS=3
while (($#)); do
  case $1 in
    --sessions) SESSIONS=$2; shift 2 ;;
    --handshakes) HANDSHAKES=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "usage: $0 [--sessions N] [--handshakes N] [--concurrency C] [--runs R]" >&2; exit 2 ;;
  esac
done
source bench/lib.sh
source bench/systems.sh
bench_prepare cvpn-load jq
max=$((SESSIONS > HANDSHAKES ? SESSIONS : HANDSHAKES))
"$BIN/cvpn-pki" --dir "$WORK/pki" init --cn "Load CA" >/dev/null
"$BIN/cvpn-pki" --dir "$WORK/pki" issue server vpn.example.com --ip $GW_OUT >/dev/null
t0=$(date +%s)
"$BIN/cvpn-pki" --dir "$WORK/pki" issue client load --count "$max" >/dev/null
echo "issued $max client certificates in $(( $(date +%s) - t0 )) s" >&2
# Room for every session: a /16 of client addresses.
cvpn_config 10.240.0.0/16
# The target answers pings from every session: the echo probe crosses the
# real data path (policy, tun, SNAT, conntrack) and back.
in_t sh -c 'echo 0 > /proc/sys/net/ipv4/icmp_ratelimit'

load() { # load COUNT HOLD
  local gw_pid
  gw_pid=$(pgrep -f "cvpn-gw serve --config $WORK/endpoint.toml" | head -1)
  in_c sh -c "ulimit -n 65536 2>/dev/null || true; exec '$BIN/cvpn-load' --remote $GW_OUT:443 --pki '$WORK/pki' \
    --count $1 --concurrency $CONCURRENCY --ping $TARGET --hold $2 --gateway-pid $gw_pid --json"
}

rates=()
for ((i = 0; i < RUNS; i++)); do
  start_cvpn_gateway
  out=$(load "$HANDSHAKES" 1) || { echo "load run failed: $out" >&2; tail -5 "$WORK/cvpn-gw.log" >&2; }
  echo "  handshakes run $((i + 1)): $out" >&2
  rates+=("$(jq -r '.handshakes_per_second | floor' <<<"$out")")
  stop_all
done
start_cvpn_gateway
out=$(load "$SESSIONS" 5) || { echo "load run failed: $out" >&2; tail -5 "$WORK/cvpn-gw.log" >&2; }
echo "  sessions run: $out" >&2
stop_all

echo
echo "Full mutual-TLS 1.3 handshakes (ECDSA P-256, no resumption, $CONCURRENCY in flight, load tool on the same $(nproc)-core machine):"
echo "  $HANDSHAKES sessions per run, rates ${rates[*]}/s: median $(median "${rates[@]}")/s"
echo "Idle sessions held by one gateway:"
jq -r '"  \(.established) of \(.requested) established, \(.echo_replies) echo replies through the tunnel, failures \(.failures)\n  gateway RSS \(.gateway_rss_kib_before) KiB before, \(.gateway_rss_kib_idle) KiB with the sessions idle: \(.gateway_rss_kib_per_idle_session * 10 | floor / 10) KiB per session"' <<<"$out"
