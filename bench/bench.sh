#!/usr/bin/env bash
# Throughput and latency of cvpn (over its TLS stream, and with its datagram
# channel: cvpn-udp) beside OpenVPN 2.6 (UDP, TCP), ocserv with
# openconnect (TLS only, DTLS) and plain kernel forwarding with SNAT, on the
# same three namespaces (client, gateway, target), in one run. Prints one
# table of medians and cvpn's ratio to each system. Needs root.
#
#   bash bench/bench.sh [--runs N] [--seconds S] [--systems "cvpn plain ..."]
#
# With CVPN_ALT_BIN set, the systems cvpn-alt and cvpn-udp-alt run the
# cvpn-gw and cvpn-client found there (an A/B of two builds in one run).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=3
BENCH_SECONDS=5
SYSTEMS="plain cvpn cvpn-udp openvpn-udp openvpn-tcp ocserv-tls ocserv-dtls"
while (($#)); do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --seconds) BENCH_SECONDS=$2; shift 2 ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--seconds S] [--systems LIST]" >&2; exit 2 ;;
  esac
done

source bench/lib.sh
source bench/systems.sh
bench_prepare cvpn-bench openvpn ocserv openconnect vpnc-scripts jq iperf3
"$BIN/cvpn-pki" --dir "$WORK/pki" init --cn "Bench CA" >/dev/null
"$BIN/cvpn-pki" --dir "$WORK/pki" issue server vpn.example.com --ip $GW_OUT >/dev/null
"$BIN/cvpn-pki" --dir "$WORK/pki" issue client bench >/dev/null
"$BIN/cvpn-pki" --dir "$WORK/pki" issue client bench2 >/dev/null

declare -A UP DOWN UP4 RTT CPU CPU_UP CPU_DOWN
# CPU seconds of the gateway namespace per Gbit carried over the streams
# given ("GBPS CPU" each): "nan" where nothing runs there (plain
# forwarding).
cpu_per_gbit() { # cpu_per_gbit "GBPS CPU"...
  printf '%s\n' "$@" | awk -v s="$BENCH_SECONDS" '{ if ($1 == "nan") bad = 1; gbit += $1 * s; cpu += $2 }
    END { if (bad || gbit <= 0 || cpu <= 0) print "nan"; else printf "%.3f\n", cpu / gbit }'
}
measure() { # measure NAME: RUNS rounds of each test on the running system
  local up=() down=() up4=() rtt=() cpu=() cpu_up=() cpu_down=() i u d
  for ((i = 0; i < RUNS; i++)); do
    u=$(iperf_gbps_cpu)
    d=$(iperf_gbps_cpu -R)
    up+=("${u% *}")
    down+=("${d% *}")
    cpu+=("$(cpu_per_gbit "$u" "$d")")
    cpu_up+=("$(cpu_per_gbit "$u")")
    cpu_down+=("$(cpu_per_gbit "$d")")
    up4+=("$(iperf_gbps -P 4)")
    rtt+=("$(ping_ms)")
  done
  UP[$1]=$(median "${up[@]}"); DOWN[$1]=$(median "${down[@]}")
  UP4[$1]=$(median "${up4[@]}"); RTT[$1]=$(median "${rtt[@]}")
  CPU[$1]=$(median "${cpu[@]}")
  CPU_UP[$1]=$(median "${cpu_up[@]}"); CPU_DOWN[$1]=$(median "${cpu_down[@]}")
  echo "  $1: up ${up[*]} | down ${down[*]} | up x4 ${up4[*]} | rtt ${rtt[*]} ms | gateway CPU s/Gbit ${cpu[*]} (up ${cpu_up[*]}, down ${cpu_down[*]})" >&2
}

for s in $SYSTEMS; do
  echo "== $s" >&2
  rc=0
  start_system "$s" || rc=$?
  # 2: not a system start_system knows.
  [ $rc = 2 ] && exit 2
  [ $rc = 0 ] && measure "$s"
  stop_system "$s"
done

CONNECT=nan
CORES=()
if [[ " $SYSTEMS " == *" cvpn "* ]]; then
  cvpn_config; start_cvpn_gateway
  times=()
  for ((i = 0; i < RUNS + 2; i++)); do times+=("$(cvpn_connect_ms)"); sleep 0.3; done
  echo "  connect to first ping: ${times[*]} ms" >&2
  CONNECT=$(median "${times[@]}")
  stop_all
  echo "== cvpn, one client then two (one stream up each)" >&2
  testbed_second_client
  CORES=()
  for ((i = 0; i < RUNS; i++)); do
    mapfile -t -O "${#CORES[@]}" CORES < <(cvpn_cores)
  done
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "-"; else printf "%.1fx", a / b }'; }
echo
echo "Medians of $RUNS runs, ${BENCH_SECONDS}s each, iperf3 TCP client -> target (up) and target -> client (down); $(nproc) cores."
echo "gw CPU s/Gbit: CPU seconds (user + system) of the processes in the gateway namespace per Gbit of the up and down streams (both, up alone, down alone)."
echo
printf '| %-24s | %12s | %12s | %12s | %10s | %13s | %10s | %10s |\n' system "up Gbit/s" "down Gbit/s" "up x4 Gbit/s" "RTT ms" "gw CPU s/Gbit" "gw CPU up" "gw CPU down"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "--------------------------" "-------------:" "-------------:" "-------------:" "-----------:" "--------------:" "-----------:" "-----------:"
for s in $SYSTEMS; do
  printf '| %-24s | %12s | %12s | %12s | %10s | %13s | %10s | %10s |\n' "$s" "${UP[$s]:-nan}" "${DOWN[$s]:-nan}" "${UP4[$s]:-nan}" "${RTT[$s]:-nan}" "${CPU[$s]:-nan}" "${CPU_UP[$s]:-nan}" "${CPU_DOWN[$s]:-nan}"
done
ms_diff() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan") print "-"; else printf "%+.3f", a - b }'; }
if [[ -n "${UP[cvpn]:-}${UP[cvpn-udp]:-}" ]]; then
  echo
  printf '| %-24s | %12s | %12s | %12s | %10s |\n' "cvpn / system" "up" "down" "up x4" "RTT diff ms"
  printf '|%s|%s|%s|%s|%s|\n' "--------------------------" "-------------:" "-------------:" "-------------:" "-----------:"
  for c in cvpn cvpn-udp; do
    [[ -n "${UP[$c]:-}" ]] || continue
    for s in $SYSTEMS; do
      [[ "$s" = cvpn* ]] && continue
      printf '| %-24s | %12s | %12s | %12s | %10s |\n' "$c / $s" "$(ratio "${UP[$c]}" "${UP[$s]:-nan}")" \
        "$(ratio "${DOWN[$c]}" "${DOWN[$s]:-nan}")" "$(ratio "${UP4[$c]}" "${UP4[$s]:-nan}")" \
        "$(ms_diff "${RTT[$c]}" "${RTT[$s]:-nan}")"
    done
  done
fi
if [[ -n "${UP[cvpn]:-}" ]]; then
  echo
  echo "cvpn-client start to first answered ping: median $CONNECT ms"
  echo
  echo "Gateway CPU (100% = one of $(nproc) cores; busy threads in brackets) with one and two clients:"
  printf '  %s\n' "${CORES[@]}"
fi
