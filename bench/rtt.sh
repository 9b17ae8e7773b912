#!/usr/bin/env bash
# Idle round-trip time, interleaved: each system is started in turn, pinged
# PINGS times 50 ms apart (every ping wakes an idle tunnel) and stopped,
# for ROUNDS rounds, so that every system sees the same hours of a noisy
# machine. Prints each round's median and the median of them. Needs root.
#
#   bash bench/rtt.sh [--rounds 5] [--pings 100] [--systems "cvpn-udp ocserv-dtls ..."]
#
# Systems: plain, cvpn, cvpn-udp, openvpn-udp, openvpn-tcp, ocserv-tls,
# ocserv-dtls; and cvpn-alt / cvpn-udp-alt, the same with the cvpn-gw and
# cvpn-client found in $CVPN_ALT_BIN (an A/B of two builds in one run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=5
SYSTEMS="cvpn-udp ocserv-dtls cvpn ocserv-tls"
export PING_COUNT=100
while (($#)); do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --pings) PING_COUNT=$2; shift 2 ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--pings N] [--systems LIST]" >&2; exit 2 ;;
  esac
done

source bench/lib.sh
source bench/systems.sh
bench_prepare cvpn-rtt openvpn ocserv openconnect vpnc-scripts jq
"$BIN/cvpn-pki" --dir "$WORK/pki" init --cn "Bench CA" >/dev/null
"$BIN/cvpn-pki" --dir "$WORK/pki" issue server vpn.example.com --ip $GW_OUT >/dev/null
"$BIN/cvpn-pki" --dir "$WORK/pki" issue client bench >/dev/null
declare -A ROUND
for ((r = 1; r <= ROUNDS; r++)); do
  for s in $SYSTEMS; do
    if start_system "$s"; then
      sleep 1 # let datagram paths come up and first-packet costs pass
      ROUND[$s]="${ROUND[$s]:-} $(ping_ms)"
    else
      ROUND[$s]="${ROUND[$s]:-} nan"
    fi
    stop_system "$s"
  done
  echo "round $r:$(for s in $SYSTEMS; do printf ' %s %s' "$s" "${ROUND[$s]##* }"; done)" >&2
done

echo
echo "Idle RTT, $ROUNDS interleaved rounds of $PING_COUNT pings 50 ms apart; $(nproc) cores."
echo
printf '| %-14s | %-40s | %9s |\n' system "round medians (ms)" median
printf '|%s|%s|%s|\n' "----------------" "------------------------------------------" "----------:"
for s in $SYSTEMS; do
  # shellcheck disable=SC2086
  printf '| %-14s | %-40s | %9s |\n' "$s" "${ROUND[$s]# }" "$(median ${ROUND[$s]})"
done
