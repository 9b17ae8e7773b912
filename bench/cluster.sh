#!/usr/bin/env bash
# One endpoint on one gateway and on a cluster of three (three etcd
# members of Debian's etcd-server), side by side in one run:
# - cvpn-client's time from start to the first answered ping through the
#   tunnel (median of RUNS): a single gateway, and a cluster node (whose
#   admission asks etcd);
# - full mutual-TLS handshakes per second (cvpn-load, median of RUNS): one
#   gateway alone, one gateway as a cluster of one (what etcd costs), and
#   the three nodes at once (one load per node, rates summed). Everything shares this machine's cores: the figure says what
#   the cluster's bookkeeping costs, not what three machines would give.
#
#   bash bench/cluster.sh [--handshakes N] [--concurrency C] [--runs R]
set -euo pipefail
cd "$(dirname "$0")/.."
HANDSHAKES=1000
CONCURRENCY=32
RUNS=5
while (($#)); do
  case $1 in
    --handshakes) HANDSHAKES=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "usage: $0 [--handshakes N] [--concurrency C] [--runs R]" >&2; exit 2 ;;
  esac
done
source bench/lib.sh
source bench/systems.sh
# The cluster's own namespaces (lib.sh's testbed stays unused).
P=cvpnb-$BENCH_ID
NS_HUB=$P-hub NS_TGT=$P-tgt NS_ETCD=$P-etcd NS_CL=$P-cl
NODES=3
cluster_down() {
  local n
  for n in "$NS_HUB" "$NS_TGT" "$NS_ETCD" "$NS_CL" "$P-gw0" "$P-gw1" "$P-gw2"; do
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$n" 2>/dev/null || true
  done
}
bench_prepare cvpn-cluster jq curl etcd-server
testbed_down
trap 'stop_nodes 2>/dev/null || true; stop_all 2>/dev/null || true; cluster_down; rm -rf "$WORK"' EXIT INT TERM

plug() { # plug BRIDGE NS DEV PORT ADDR: NS joins the hub's BRIDGE
  ip -n "$NS_HUB" link add "$4" type veth peer name "$3" netns "$2"
  ip -n "$NS_HUB" link set "$4" master "$1" up
  ip -n "$2" addr add "$5/24" dev "$3"
  ip -n "$2" link set "$3" up
}
for n in "$NS_HUB" "$NS_TGT" "$NS_ETCD" "$NS_CL"; do ip netns add "$n"; ip -n "$n" link set lo up; done
for b in bc bt; do ip -n "$NS_HUB" link add $b type bridge; ip -n "$NS_HUB" link set $b up; done
plug bt "$NS_TGT" t0 pt "$TARGET"
plug bc "$NS_CL" c0 pc 198.18.0.100
ip -n "$NS_ETCD" link add br0 type bridge
ip -n "$NS_ETCD" addr add 10.0.9.1/24 dev br0
ip -n "$NS_ETCD" link set br0 up
members=(10.0.9.11 10.0.9.12 10.0.9.13)
initial=""
for i in 0 1 2; do
  ip -n "$NS_ETCD" addr add "${members[$i]}/24" dev br0
  initial+="${initial:+,}m$i=http://${members[$i]}:2380"
done
for i in 0 1 2; do
  m=${members[$i]}
  spawn "$WORK/etcd$i.log" "$NS_ETCD" etcd --name "m$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://$m:2379" --advertise-client-urls "http://$m:2379" \
    --listen-peer-urls "http://$m:2380" --initial-advertise-peer-urls "http://$m:2380" \
    --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token cvpn-bench
done
for g in 0 1 2; do
  ns=$P-gw$g
  ip netns add "$ns"; ip -n "$ns" link set lo up
  plug bc "$ns" c0 "gc$g" "198.18.0.$((11 + g))"
  plug bt "$ns" g1 "gt$g" "192.168.1.$((11 + g))"
  ip -n "$NS_ETCD" link add "et$g" type veth peer name etcd0 netns "$ns"
  ip -n "$NS_ETCD" link set "et$g" master br0 up
  ip -n "$ns" addr add "10.0.9.$((21 + g))/24" dev etcd0
  ip -n "$ns" link set etcd0 up
done
for _ in $(seq 150); do
  ip netns exec "$NS_ETCD" curl -s -m 1 "http://${members[0]}:2379/health" | grep -q '"health":"true"' && break
  sleep 0.2
done
in_tgt() { ip netns exec "$NS_TGT" "$@"; }
in_tgt sh -c 'echo 0 > /proc/sys/net/ipv4/icmp_ratelimit'

"$BIN/cvpn-pki" --dir "$WORK/pki" init --cn "Cluster bench CA" >/dev/null
"$BIN/cvpn-pki" --dir "$WORK/pki" issue server vpn.example.com >/dev/null
"$BIN/cvpn-pki" --dir "$WORK/pki" issue client bench >/dev/null
for g in 0 1 2; do "$BIN/cvpn-pki" --dir "$WORK/pki" issue client "l$g" --count "$HANDSHAKES" >/dev/null; done

node_config() { # node_config G clustered|single
  local cluster=""
  if [[ $2 == clustered ]]; then
    cluster="[cluster]
node = \"gw$1\"
advertise = \"198.18.0.$((11 + $1)):443\"
etcd = [\"http://${members[0]}:2379\", \"http://${members[1]}:2379\", \"http://${members[2]}:2379\"]
prefix = \"/bench-$BENCH_ID/\""
  fi
  cat >"$WORK/gw$1.toml" <<TOML
listen = "0.0.0.0:443"
client_cidr = "10.240.0.0/16"
control_socket = "$WORK/gw$1.sock"
state_dir = "$WORK/gw$1-state"
handshake_rate_per_source = 1000000
max_connections = 1000000
$cluster

[tls]
cert = "$WORK/pki/issued/vpn.example.com.crt"
key = "$WORK/pki/private/vpn.example.com.key"
client_ca = "$WORK/pki/ca.crt"
crl = "$WORK/pki/crl.pem"

[[target_networks]]
id = "tn-a"
interface = "g1"
eni_address = "192.168.1.$((11 + $1))"
vpc_cidr = "192.168.1.0/24"

[[authorization_rules]]
destination = "0.0.0.0/0"
TOML
}
gw_pids=()
start_nodes() { # start_nodes single|one|clustered: gw0 alone, gw0 as a cluster of one, all three
  local n=1 g remote=(--remote 198.18.0.11:443) kind=clustered
  case $1 in
    single) kind=single ;;
    one) remote=() ;;
    clustered) n=$NODES; remote=() ;;
  esac
  for ((g = 0; g < n; g++)); do
    node_config "$g" $kind
    ip netns exec "$P-gw$g" "$BIN/cvpn-gw" serve --config "$WORK/gw$g.toml" >"$WORK/gw$g.log" 2>&1 &
    gw_pids+=($!)
  done
  for ((g = 0; g < n; g++)); do
    for _ in $(seq 200); do grep -q "registered in the cluster\|endpoint up" "$WORK/gw$g.log" && break; sleep 0.05; done
    grep -q "endpoint up" "$WORK/gw$g.log" || { cat "$WORK/gw$g.log"; exit 1; }
  done
  # Every node registered before the profile lists them (from gw0, which
  # reaches etcd).
  sleep 1
  ip netns exec "$P-gw0" "$BIN/cvpn-gw" export-profile --config "$WORK/gw0.toml" \
    --pki "$WORK/pki" --client bench "${remote[@]}" --out "$WORK/bench.ovpnx" 2>/dev/null
}
stop_nodes() {
  local p
  for p in "${gw_pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${gw_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  gw_pids=()
}
connect_ms() { # milliseconds from cvpn-client's start to the first answered ping
  local t0 t1 pid
  t0=$(date +%s%N)
  ip netns exec "$NS_CL" "$BIN/cvpn-client" connect "$WORK/bench.ovpnx" >"$WORK/connect.log" 2>&1 &
  pid=$!
  while ! ip netns exec "$NS_CL" ping -n -c 1 -W 1 $TARGET >/dev/null 2>&1; do
    (($(date +%s%N) - t0 < 20000000000)) || { kill $pid; echo nan; return; }
  done
  t1=$(date +%s%N)
  kill -INT $pid; wait $pid 2>/dev/null || true
  echo $(((t1 - t0) / 1000000))
}
load_rate() { # load_rate G: handshakes per second against node G, with identities lG-*
  local out
  out=$(ip netns exec "$NS_CL" sh -c "ulimit -n 65536 2>/dev/null || true; exec '$BIN/cvpn-load' \
    --remote 198.18.0.$((11 + $1)):443 --pki '$WORK/pki' --prefix l$1 --count $HANDSHAKES \
    --concurrency $CONCURRENCY --hold 1 --json") || { echo "load on gw$1 failed: $out" >&2; echo nan; return; }
  jq -r '.handshakes_per_second | floor' <<<"$out"
}

declare -A connect rate
for mode in single one clustered; do
  connect[$mode]=""; rate[$mode]=""
  for ((r = 0; r < RUNS; r++)); do
    start_nodes $mode
    connect[$mode]+=" $(connect_ms)"
    if [[ $mode != clustered ]]; then
      rate[$mode]+=" $(load_rate 0)"
    else
      loads=()
      for g in 0 1 2; do load_rate $g >"$WORK/rate$g" & loads+=($!); done
      wait "${loads[@]}"
      rate[$mode]+=" $(cat "$WORK"/rate? | awk '{ if ($1 == "nan") bad = 1; s += $1 } END { print bad ? "nan" : s }')"
    fi
    stop_nodes
  done
done
# shellcheck disable=SC2086
{
  echo
  echo "cvpn-client start to first ping through the tunnel, median of $RUNS (ms):"
  echo "  single gateway: $(median ${connect[single]}) (runs:${connect[single]})"
  echo "  cluster of one: $(median ${connect[one]}) (runs:${connect[one]})"
  echo "  cluster node:   $(median ${connect[clustered]}) (runs:${connect[clustered]})"
  echo "Full mutual-TLS handshakes per second ($HANDSHAKES per node per run, $CONCURRENCY in flight per load), median of $RUNS:"
  echo "  one gateway:          $(median ${rate[single]}) (runs:${rate[single]})"
  echo "  a cluster of one:     $(median ${rate[one]}) (runs:${rate[one]})"
  echo "  three cluster nodes:  $(median ${rate[clustered]}) (runs:${rate[clustered]}), all on this $(nproc)-core machine"
}
