# Shared pieces of the benchmark scripts: the testbed and measurements.
# Sourced, not run. Namespaces are named after the running script's PID.

BENCH_ID=${BENCH_ID:-$$}
NS_C=cvpnb-$BENCH_ID-client
NS_C2=cvpnb-$BENCH_ID-client2
NS_G=cvpnb-$BENCH_ID-gw
NS_T=cvpnb-$BENCH_ID-target
TARGET=192.168.1.20
GW_OUT=198.18.0.1
ENI=192.168.1.1

in_c() { ip netns exec "$NS_C" "$@"; }
in_c2() { ip netns exec "$NS_C2" "$@"; }
in_g() { ip netns exec "$NS_G" "$@"; }
in_t() { ip netns exec "$NS_T" "$@"; }

testbed_up() {
  testbed_down
  for n in "$NS_C" "$NS_G" "$NS_T"; do ip netns add "$n"; ip -n "$n" link set lo up; done
  ip -n "$NS_C" link add eth0 type veth peer name eth0 netns "$NS_G"
  ip -n "$NS_G" link add eth1 type veth peer name eth0 netns "$NS_T"
  ip -n "$NS_C" addr add 198.18.0.2/24 dev eth0
  ip -n "$NS_G" addr add $GW_OUT/24 dev eth0
  ip -n "$NS_G" addr add $ENI/24 dev eth1
  ip -n "$NS_T" addr add $TARGET/24 dev eth0
  ip -n "$NS_C" link set eth0 up; ip -n "$NS_G" link set eth0 up
  ip -n "$NS_G" link set eth1 up; ip -n "$NS_T" link set eth0 up
}

# A second client, 198.18.2.2, behind the gateway's eth2 (198.18.2.1).
testbed_second_client() {
  ip netns add "$NS_C2"; ip -n "$NS_C2" link set lo up
  ip -n "$NS_C2" link add eth0 type veth peer name eth2 netns "$NS_G"
  ip -n "$NS_C2" addr add 198.18.2.2/24 dev eth0
  ip -n "$NS_G" addr add 198.18.2.1/24 dev eth2
  ip -n "$NS_C2" link set eth0 up; ip -n "$NS_G" link set eth2 up
  ip -n "$NS_C2" route add default via 198.18.2.1
}

testbed_down() {
  for n in "$NS_C" "$NS_C2" "$NS_G" "$NS_T"; do
    if ip netns pids "$n" >/dev/null 2>&1; then
      for p in $(ip netns pids "$n" 2>/dev/null); do kill "$p" 2>/dev/null; done
      sleep 0.3
      for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
      ip netns del "$n" 2>/dev/null
    fi
  done
  return 0
}

# SNAT from a tunnel's client range to the ENI address, as every system gets.
snat_for() {
  in_g nft -f - <<NFT
table ip bench_nat {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    ip saddr $1 oifname "eth1" snat to $ENI
  }
}
NFT
  in_g sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
}

snat_off() { in_g nft delete table ip bench_nat 2>/dev/null || true; }

# iperf3 against the target: prints Gbit/s. Args: extra iperf3 flags.
iperf_gbps() {
  iperf_server
  local json
  json=$(in_c timeout -k 5 $((BENCH_SECONDS + 20)) iperf3 -c $TARGET -p 5201 -t "$BENCH_SECONDS" -O 1 -J "$@" 2>/dev/null) || { echo "nan"; return; }
  jq -r '.end.sum_received.bits_per_second / 1e9 * 1000 | floor / 1000' <<<"$json" 2>/dev/null || echo nan
}

# CPU seconds (user + system, every thread) the processes in the gateway
# namespace (the VPN server under test) have used so far.
gw_cpu_s() {
  local ticks=0 p t
  for p in $(ip netns pids "$NS_G" 2>/dev/null); do
    # Fields after the command name, which may hold spaces: utime is the
    # 12th, stime the 13th.
    t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
    ticks=$((ticks + ${t:-0}))
  done
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.3f", t / hz}'
}

# iperf_gbps with the gateway's CPU: prints "GBPS CPU_SECONDS".
iperf_gbps_cpu() {
  local before after g
  before=$(gw_cpu_s)
  g=$(iperf_gbps "$@")
  after=$(gw_cpu_s)
  echo "$g $(awk -v a="$before" -v b="$after" 'BEGIN {printf "%.3f", b - a}')"
}

# Fresh one-shot iperf3 servers in the target, one per port (default 5201).
# The last test's may still be finishing (slow tunnels drain late), and a
# new server cannot bind its port then: the client found the old one gone
# ("connection refused").
iperf_server() {
  local p _ ports=("${@:-5201}")
  for p in $(ip netns pids "$NS_T" 2>/dev/null); do
    [ "$(cat /proc/"$p"/comm 2>/dev/null)" = iperf3 ] && kill -9 "$p" 2>/dev/null
  done
  for p in "${ports[@]}"; do in_t iperf3 -s -1 -D -p "$p" >/dev/null 2>&1; done
  for _ in $(seq 50); do
    (($(in_t ss -Hltn | grep -cE ":($(IFS='|'; echo "${ports[*]}")) ") >= ${#ports[@]})) && return 0
    sleep 0.1
  done
}

# Median RTT in ms of PING_COUNT pings (100: the median of 20 moved by
# 30 µs from run to run, the size of the differences it has to show).
ping_ms() {
  in_c ping -n -c "${PING_COUNT:-100}" -i ${PING_INTERVAL:-0.05} -W 2 $TARGET 2>/dev/null |
    sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' | sort -n |
    awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'
}

# Median of the arguments (nan ignored).
median() {
  printf '%s\n' "$@" | { grep -v nan || true; } | sort -g |
    awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'
}

# Waits until the client (or the namespace $2) can ping the target; fails
# after $1 seconds.
wait_ping() {
  local deadline=$((SECONDS + $1))
  while ((SECONDS < deadline)); do
    ip netns exec "${2:-$NS_C}" ping -n -c 1 -W 1 $TARGET >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# Everything a bench script needs before it starts: Debian packages, release
# binaries ($BIN), the testbed and a work directory ($WORK) removed on exit.
bench_prepare() { # bench_prepare WORK_PREFIX EXTRA_PACKAGES...
  bash scripts/deps.sh
  local missing=() p
  for p in "${@:2}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  cargo build --release --workspace --bins -q
  BIN=$PWD/target/release
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  trap 'stop_all 2>/dev/null || true; testbed_down; rm -rf "$WORK"' EXIT INT TERM
  testbed_up
}
