# Start and stop functions for each system measured by bench.sh, on the
# testbed of lib.sh. Sourced. Each start_X leaves the client able to reach
# $TARGET through X (or fails); each stop_X removes what start_X added.
# All use the same certificates (issued by cvpn-pki, ECDSA P-256) and the
# same SNAT to the gateway's address on the target subnet.

bg_pids=()
spawn() { # spawn LOG NAMESPACE CMD...: a process in a namespace, remembered for stop_all
  # `ip netns exec` execs the command, so the pid is the command's own.
  ip netns exec "$2" "${@:3}" >"$1" 2>&1 &
  bg_pids+=($!)
}
stop_all() {
  local p
  for p in "${bg_pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${bg_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  bg_pids=()
}

# start_system NAME / stop_system NAME: any system by its name in the
# tables: plain, cvpn, cvpn-udp, cvpn-flowlog (cvpn with a flow log:
# conntrack's per-flow counters and events), cvpn-openvpn-udp, cvpn-openvpn-tcp (the
# stock openvpn client against cvpn-gw), openvpn-udp, openvpn-tcp,
# ocserv-tls, ocserv-dtls; and cvpn-alt / cvpn-udp-alt / cvpn-openvpn-udp-alt /
# cvpn-openvpn-tcp-alt, the same with the cvpn-gw and cvpn-client found in
# $CVPN_ALT_BIN (an A/B of two builds in one run).
start_system() {
  local own=$BIN rc=0
  case $1 in
    *-alt) [ -n "${CVPN_ALT_BIN:-}" ] || { echo "$1 needs CVPN_ALT_BIN" >&2; return 1; } ;;
  esac
  case $1 in
    plain) start_plain ;;
    cvpn) start_cvpn ;;
    cvpn-udp) CVPN_TRANSPORT=udp start_cvpn ;;
    cvpn-flowlog) CVPN_FLOW_LOG=$WORK/flows.jsonl start_cvpn ;;
    cvpn-alt) BIN=$CVPN_ALT_BIN; start_cvpn || rc=$? ;;
    cvpn-udp-alt) BIN=$CVPN_ALT_BIN; CVPN_TRANSPORT=udp start_cvpn || rc=$? ;;
    cvpn-openvpn-udp) start_cvpn_openvpn udp ;;
    cvpn-openvpn-tcp) start_cvpn_openvpn tcp ;;
    cvpn-openvpn-udp-alt) BIN=$CVPN_ALT_BIN; start_cvpn_openvpn udp || rc=$? ;;
    cvpn-openvpn-tcp-alt) BIN=$CVPN_ALT_BIN; start_cvpn_openvpn tcp || rc=$? ;;
    openvpn-udp) start_openvpn udp ;;
    openvpn-tcp) start_openvpn tcp ;;
    ocserv-tls) start_ocserv tls ;;
    ocserv-dtls) start_ocserv dtls ;;
    *) echo "unknown system $1" >&2; return 2 ;;
  esac || rc=$?
  BIN=$own
  return $rc
}
stop_system() {
  case $1 in
    plain) stop_plain ;;
    openvpn-*) stop_openvpn ;;
    ocserv-*) stop_ocserv ;;
    *) stop_cvpn ;;
  esac
}

# --- plain kernel forwarding with SNAT: the machine's limit for this path
start_plain() {
  in_c ip route add 192.168.1.0/24 via $GW_OUT
  snat_for 198.18.0.0/24
}
stop_plain() {
  in_c ip route del 192.168.1.0/24 via $GW_OUT 2>/dev/null || true
  snat_off
}

# --- cvpn
# cvpn_config [CLIENT_CIDR]: endpoint.toml, and bench.ovpnx if a "bench"
# client exists. CVPN_TRANSPORT=udp adds the datagram channel.
cvpn_config() {
  local flow_log=""
  [ -z "${CVPN_FLOW_LOG:-}" ] || flow_log="flow_log = \"$CVPN_FLOW_LOG\""
  cat >"$WORK/endpoint.toml" <<TOML
listen = "$GW_OUT:443"
client_cidr = "${1:-10.250.0.0/22}"
control_socket = "$WORK/cvpn-gw.sock"
transport_protocol = "${CVPN_TRANSPORT:-tcp}"
${CVPN_DATA_THREADS:+data_threads = $CVPN_DATA_THREADS}
state_dir = "$WORK/state"
# One source opens every load session: no per-source or endpoint cap.
handshake_rate_per_source = 1000000
max_connections = 1000000
$flow_log

[tls]
cert = "$WORK/pki/issued/vpn.example.com.crt"
key = "$WORK/pki/private/vpn.example.com.key"
client_ca = "$WORK/pki/ca.crt"
crl = "$WORK/pki/crl.pem"

[[target_networks]]
id = "tn-a"
interface = "eth1"
vpc_cidr = "192.168.1.0/24"

[[authorization_rules]]
destination = "0.0.0.0/0"
TOML
  [ -f "$WORK/pki/issued/bench.crt" ] || return 0
  "$BIN/cvpn-gw" export-profile --config "$WORK/endpoint.toml" --pki "$WORK/pki" --client bench \
    --remote $GW_OUT:443 --out "$WORK/bench.ovpnx" 2>/dev/null
}
start_cvpn_gateway() {
  spawn "$WORK/cvpn-gw.log" "$NS_G" "$BIN/cvpn-gw" serve --config "$WORK/endpoint.toml"
  for _ in $(seq 100); do grep -q "endpoint up" "$WORK/cvpn-gw.log" && return 0; sleep 0.05; done
  cat "$WORK/cvpn-gw.log"; return 1
}
start_cvpn() {
  cvpn_config
  start_cvpn_gateway
  spawn "$WORK/cvpn-client.log" "$NS_C" "$BIN/cvpn-client" connect "$WORK/bench.ovpnx"
  wait_ping 20
}
stop_cvpn() { stop_all; }

# The stock openvpn 2.6 client with the exported profile, against cvpn-gw,
# with the client flags of start_openvpn (AES-256-GCM, no DCO).
start_cvpn_openvpn() { # start_cvpn_openvpn udp|tcp
  CVPN_TRANSPORT=$1 cvpn_config
  start_cvpn_gateway
  spawn "$WORK/openvpn-client.log" "$NS_C" openvpn --config "$WORK/bench.ovpnx" \
    --data-ciphers AES-256-GCM --disable-dco --verb 1
  wait_ping 30 || { tail -5 "$WORK/openvpn-client.log" "$WORK/cvpn-gw.log"; return 1; }
}

# Milliseconds from starting cvpn-client to the first answered ping (the
# gateway is already up).
cvpn_connect_ms() {
  local t0 t1 pid
  t0=$(date +%s%N)
  ip netns exec "$NS_C" "$BIN/cvpn-client" connect "$WORK/bench.ovpnx" >"$WORK/connect.log" 2>&1 &
  pid=$!
  while ! in_c ping -n -c 1 -W 1 $TARGET >/dev/null 2>&1; do
    (( $(date +%s%N) - t0 < 20000000000 )) || { kill $pid; echo nan; return; }
  done
  t1=$(date +%s%N)
  kill -INT $pid; wait $pid 2>/dev/null || true
  echo $(( (t1 - t0) / 1000000 ))
}

# --- OpenVPN 2.6, TLS mode with certificates, AES-256-GCM, no kernel offload
start_openvpn() { # start_openvpn udp|tcp
  local sproto=udp4 cproto=udp4
  [ "$1" = tcp ] && sproto=tcp4-server cproto=tcp4-client
  local p="$WORK/pki"
  spawn "$WORK/openvpn-server.log" "$NS_G" openvpn --dev tun --dev-type tun --proto $sproto --port 1194 \
    --server 10.8.0.0 255.255.255.0 --topology subnet --ca "$p/ca.crt" \
    --cert "$p/issued/vpn.example.com.crt" --key "$p/private/vpn.example.com.key" --dh none \
    --data-ciphers AES-256-GCM --disable-dco --push "route 192.168.1.0 255.255.255.0" --verb 1
  snat_for 10.8.0.0/24
  sleep 0.5
  spawn "$WORK/openvpn-client.log" "$NS_C" openvpn --client --dev tun --proto $cproto --remote $GW_OUT 1194 \
    --ca "$p/ca.crt" --cert "$p/issued/bench.crt" --key "$p/private/bench.key" \
    --remote-cert-tls server --data-ciphers AES-256-GCM --disable-dco --nobind --verb 1
  wait_ping 30 || { tail -5 "$WORK"/openvpn-*.log; return 1; }
}
stop_openvpn() { stop_all; snat_off; }

# --- ocserv with the openconnect client, certificate authentication
start_ocserv() { # start_ocserv tls|dtls
  local p="$WORK/pki" udp="" nodtls=--no-dtls
  if [ "$1" = dtls ]; then udp="udp-port = 4443"; nodtls=""; fi
  cat >"$WORK/ocserv.conf" <<CONF
auth = "certificate"
tcp-port = 4443
$udp
socket-file = $WORK/ocserv.sock
server-cert = $p/issued/vpn.example.com.crt
server-key = $p/private/vpn.example.com.key
ca-cert = $p/ca.crt
cert-user-oid = 2.5.4.3
isolate-workers = false
max-clients = 16
keepalive = 32400
dpd = 90
try-mtu-discovery = false
device = vpns
ipv4-network = 10.9.0.0
ipv4-netmask = 255.255.255.0
route = 192.168.1.0/255.255.255.0
use-occtl = false
pid-file = $WORK/ocserv.pid
CONF
  spawn "$WORK/ocserv.log" "$NS_G" ocserv --foreground --config "$WORK/ocserv.conf"
  snat_for 10.9.0.0/24
  sleep 0.5
  spawn "$WORK/openconnect.log" "$NS_C" openconnect --non-inter --certificate "$p/issued/bench.crt" \
    --sslkey "$p/private/bench.key" --cafile "$p/ca.crt" $nodtls --interface oc0 "https://$GW_OUT:4443"
  wait_ping 30 || { tail -5 "$WORK/ocserv.log" "$WORK/openconnect.log"; return 1; }
  if [ "$1" = dtls ]; then
    # Give DTLS a moment to take over from the TLS channel, and say if it did not.
    sleep 2
    grep -q "Established DTLS" "$WORK/openconnect.log" || { echo "warning: openconnect did not establish DTLS:" >&2; grep -i dtls "$WORK/openconnect.log" >&2; }
  fi
}
stop_ocserv() { stop_all; snat_off; }

# CPU time a process used while a command ran, in percent of one core: the
# total, then each busy thread's share ("71% (40% + 31%)").
thread_ticks() { for s in /proc/"$1"/task/*/stat; do awk '{print $1, $14 + $15}' "$s"; done 2>/dev/null; }
cpu_percent_during() { # cpu_percent_during PID CMD...
  local t0 t1 before after
  before=$(thread_ticks "$1"); t0=$(date +%s%N)
  "${@:2}"
  after=$(thread_ticks "$1"); t1=$(date +%s%N)
  awk -v hz="$(getconf CLK_TCK)" -v s="$(((t1 - t0) / 1000000))" '
    NR == FNR { b[$1] = $2; next }
    { p = ($2 - b[$1]) / hz / (s / 1000) * 100; total += p; if (p >= 5) busy[++n] = p }
    END { printf "%.0f%% (", total; for (i = 1; i <= n; i++) printf "%s%.0f%%", (i > 1 ? " + " : ""), busy[i]; print ")" }
  ' <(echo "$before") <(echo "$after")
}

# iperf3 up from each client at once; writes the total Gbit/s to $WORK/multi.gbps.
iperf_both_clients() {
  iperf_server 5201 5202
  in_c timeout -k 5 $((BENCH_SECONDS + 20)) iperf3 -c $TARGET -p 5201 -t "$BENCH_SECONDS" -O 1 -J >"$WORK/multi1.json" 2>/dev/null &
  local p1=$!
  in_c2 timeout -k 5 $((BENCH_SECONDS + 20)) iperf3 -c $TARGET -p 5202 -t "$BENCH_SECONDS" -O 1 -J >"$WORK/multi2.json" 2>/dev/null
  wait $p1
  jq -s '[.[].end.sum_received.bits_per_second] | add / 1e9 * 1000 | floor / 1000' \
    "$WORK/multi1.json" "$WORK/multi2.json" >"$WORK/multi.gbps" 2>/dev/null || echo nan >"$WORK/multi.gbps"
}
iperf_one_client() { iperf_gbps >"$WORK/multi.gbps"; }

# The gateway with one client, then two, each sending one stream: total
# Gbit/s and the gateway's CPU (100% = one core). Prints two lines. Runs in
# a subshell (bench.sh reads its output), so it stops what it started itself.
cvpn_cores() {
  cvpn_config; start_cvpn_gateway
  local gw=${bg_pids[-1]} cpu
  "$BIN/cvpn-gw" export-profile --config "$WORK/endpoint.toml" --pki "$WORK/pki" --client bench2 \
    --remote $GW_OUT:443 --out "$WORK/bench2.ovpnx" 2>/dev/null
  spawn "$WORK/cvpn-client.log" "$NS_C" "$BIN/cvpn-client" connect "$WORK/bench.ovpnx"
  wait_ping 20 || { stop_all; return 1; }
  cpu=$(cpu_percent_during "$gw" iperf_one_client)
  echo "one client: $(cat "$WORK/multi.gbps") Gbit/s, gateway CPU $cpu"
  spawn "$WORK/cvpn-client2.log" "$NS_C2" "$BIN/cvpn-client" connect "$WORK/bench2.ovpnx"
  wait_ping 20 "$NS_C2" || { stop_all; return 1; }
  cpu=$(cpu_percent_during "$gw" iperf_both_clients)
  echo "two clients: $(cat "$WORK/multi.gbps") Gbit/s, gateway CPU $cpu"
  stop_all
}
