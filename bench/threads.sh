#!/usr/bin/env bash
# How the UDP data path scales with packet threads: cvpn-gw with
# transport_protocol = "udp" and data_threads = 1, then 2, interleaved in
# each round; two stock openvpn 2.6 clients (two namespaces, one session
# each) upload at once with iperf3. Prints, per thread count, the
# aggregate Gbit/s, the gateway's CPU (100% = one core) and its CPU
# seconds per Gbit (medians of RUNS), and how the datagrams were spread
# over the threads.
#
# The kernel spreads clients over the threads' sockets by a hash of their
# addresses and ports: two clients land on one thread half the time. Each
# round therefore checks the spread with a short ping burst and, while
# one thread got nearly everything, moves the second client to another
# source port (--lport), so that the 2-thread figure is for two clients
# on two threads.
#
# On this machine the clients, iperf3 and the kernel's forwarding share
# the same 2 cores with the gateway: the aggregate cannot double; the CPU
# per Gbit is what says what N cores would carry.
#
#   bash bench/threads.sh [--runs N] [--seconds S]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=3
BENCH_SECONDS=5
while (($#)); do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --seconds) BENCH_SECONDS=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--seconds S]" >&2; exit 2 ;;
  esac
done
source bench/lib.sh
source bench/systems.sh
bench_prepare cvpn-threads openvpn jq iperf3
"$BIN/cvpn-pki" --dir "$WORK/pki" init --cn "Bench CA" >/dev/null
"$BIN/cvpn-pki" --dir "$WORK/pki" issue server vpn.example.com --ip $GW_OUT >/dev/null
"$BIN/cvpn-pki" --dir "$WORK/pki" issue client bench >/dev/null
"$BIN/cvpn-pki" --dir "$WORK/pki" issue client bench2 >/dev/null
testbed_second_client

# Datagrams each thread received so far, space-separated.
thread_datagrams() {
  "$BIN/cvpn-gw" connections --json --control "$WORK/cvpn-gw.sock" |
    jq -r '[."data-threads"[].datagrams] | map(tostring) | join(" ")'
}

# Datagrams, batches and coalesced packets of all threads so far.
thread_totals() {
  "$BIN/cvpn-gw" connections --json --control "$WORK/cvpn-gw.sock" |
    jq -r '[."data-threads"[] | [.datagrams, .batches, .coalesced]] | transpose | map(add) | map(tostring) | join(" ")'
}
per_batch() { # per_batch BEFORE AFTER (thread_totals lines)
  awk -v b="$1" -v a="$2" 'BEGIN { split(b, x, " "); split(a, y, " "); d = y[2] - x[2]; if (d > 0) printf "%.1f", (y[1] - x[1]) / d; else print "nan" }'
}
merged() { # merged BEFORE AFTER: % of the datagrams coalesced into another's write
  awk -v b="$1" -v a="$2" 'BEGIN { split(b, x, " "); split(a, y, " "); d = y[1] - x[1]; if (d > 0) printf "%.0f", (y[3] - x[3]) * 100 / d; else print "nan" }'
}

# Whether a ping burst from both clients reached more than one thread
# (each got at least a fifth of the datagrams).
spread() {
  local before after
  before=$(thread_datagrams)
  in_c ping -q -c 200 -i 0.005 $TARGET >/dev/null 2>&1 &
  local first=$!
  in_c2 ping -q -c 200 -i 0.005 $TARGET >/dev/null 2>&1 || true
  wait $first || true
  after=$(thread_datagrams)
  awk -v b="$before" -v a="$after" 'BEGIN {
    n = split(b, x, " "); split(a, y, " "); total = 0
    for (i = 1; i <= n; i++) { d[i] = y[i] - x[i]; total += d[i] }
    for (i = 1; i <= n; i++) if (d[i] < total / 5) exit 1
  }'
}

openvpn_client() { # openvpn_client NS PROFILE LPORT LOG
  spawn "$4" "$1" openvpn --config "$2" --data-ciphers AES-256-GCM --disable-dco --verb 1 \
    --bind --lport "$3"
}

# One measurement with THREADS packet threads: prints "GBPS CPU% SPREAD".
measure_threads() { # measure_threads THREADS
  CVPN_TRANSPORT=udp CVPN_DATA_THREADS=$1 cvpn_config
  start_cvpn_gateway
  local gw=${bg_pids[-1]} port=41000 tries=0 cpu before after gbps
  "$BIN/cvpn-gw" export-profile --config "$WORK/endpoint.toml" --pki "$WORK/pki" --client bench2 \
    --remote $GW_OUT:443 --out "$WORK/bench2.ovpn" 2>/dev/null
  openvpn_client "$NS_C" "$WORK/bench.ovpnx" 40000 "$WORK/openvpn1.log"
  openvpn_client "$NS_C2" "$WORK/bench2.ovpn" $port "$WORK/openvpn2.log"
  wait_ping 30 && wait_ping 30 "$NS_C2" || { tail -5 "$WORK"/openvpn*.log; stop_all; return 1; }
  while (($1 > 1)) && ! spread && ((tries < 8)); do
    kill "${bg_pids[-1]}" 2>/dev/null; wait "${bg_pids[-1]}" 2>/dev/null || true
    unset 'bg_pids[-1]'
    port=$((port + 1)); tries=$((tries + 1))
    openvpn_client "$NS_C2" "$WORK/bench2.ovpn" $port "$WORK/openvpn2.log"
    wait_ping 30 "$NS_C2" || { stop_all; return 1; }
  done
  before=$(thread_totals)
  cpu=$(cpu_percent_during "$gw" iperf_both_clients)
  after=$(thread_totals)
  gbps=$(cat "$WORK/multi.gbps")
  echo "$gbps ${cpu%%%*} $(per_batch "$before" "$after") datagrams/batch, $(merged "$before" "$after")% coalesced; per thread $(thread_datagrams) ($cpu)"
  stop_all
}

declare -A GBPS CPU PER_GBIT
for ((r = 0; r < RUNS; r++)); do
  for t in 1 2; do
    echo "== round $((r + 1)), data_threads = $t" >&2
    line=$(measure_threads $t) || continue
    echo "  $line" >&2
    read -r g c _ <<<"$line"
    GBPS[$t]+="$g "; CPU[$t]+="$c "
    PER_GBIT[$t]+="$(awk -v g="$g" -v c="$c" 'BEGIN { if (g > 0) printf "%.3f", c / 100 / g; else print "nan" }') "
  done
done

echo
echo "Medians of $RUNS rounds, ${BENCH_SECONDS}s each: two stock openvpn clients uploading at once (iperf3, one stream each) through cvpn-gw over UDP; $(nproc) cores."
echo "gw CPU: the gateway process, 100% = one core. CPU s/Gbit: its CPU seconds per Gbit carried."
echo
printf '| %-12s | %16s | %10s | %13s |\n' data_threads "total up Gbit/s" "gw CPU %" "CPU s/Gbit"
printf '|%s|%s|%s|%s|\n' "--------------" "-----------------:" "-----------:" "--------------:"
for t in 1 2; do
  # shellcheck disable=SC2086
  printf '| %-12s | %16s | %10s | %13s |\n' "$t" "$(median ${GBPS[$t]:-nan})" "$(median ${CPU[$t]:-nan})" "$(median ${PER_GBIT[$t]:-nan})"
done
