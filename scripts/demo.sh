#!/usr/bin/env bash
# The quickstart, end to end on one machine: a client, a gateway and a
# target host in network namespaces. Uses cvpn-pki, cvpn-gw and cvpn-client
# from PATH (scripts/install.sh puts them there). Needs root. Removes
# everything it creates, also on failure or Ctrl-C.
set -euo pipefail
work=$(mktemp -d /tmp/cvpn-demo.XXXXXX)
ns_c=cvpn-demo-client ns_g=cvpn-demo-gw ns_t=cvpn-demo-target
gw_pid="" client_pid=""
cleanup() {
  [ -n "$client_pid" ] && kill "$client_pid" 2>/dev/null && wait "$client_pid" 2>/dev/null
  [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null
  for n in $ns_c $ns_g $ns_t; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
for n in $ns_c $ns_g $ns_t; do ip netns del "$n" 2>/dev/null || true; ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n $ns_c link add eth0 type veth peer name eth0 netns $ns_g
ip -n $ns_g link add eth1 type veth peer name eth0 netns $ns_t
ip -n $ns_c addr add 198.18.0.2/24 dev eth0 && ip -n $ns_c link set eth0 up
ip -n $ns_g addr add 198.18.0.1/24 dev eth0 && ip -n $ns_g link set eth0 up
ip -n $ns_g addr add 192.168.1.10/24 dev eth1 && ip -n $ns_g link set eth1 up
ip -n $ns_t addr add 192.168.1.20/24 dev eth0 && ip -n $ns_t link set eth0 up
cd "$work"

echo "== certificates"
cvpn-pki --dir pki init --cn "Example VPN CA"
cvpn-pki --dir pki issue server vpn.example.com --ip 198.18.0.1
cvpn-pki --dir pki issue client alice --group engineering

echo "== endpoint"
cat > endpoint.toml <<TOML
listen = "198.18.0.1:443"
client_cidr = "10.250.0.0/22"
banner = "Authorized use only."
control_socket = "$work/cvpn-gw.sock"
connection_log = "$work/connections.jsonl"

[tls]
cert = "pki/issued/vpn.example.com.crt"
key = "pki/private/vpn.example.com.key"
client_ca = "pki/ca.crt"
crl = "pki/crl.pem"

[[target_networks]]
id = "tn-a"
interface = "eth1"
vpc_cidr = "192.168.1.0/24"

[[authorization_rules]]
destination = "192.168.1.0/24"
access_group = "engineering"
TOML
cvpn-gw check --config endpoint.toml
cvpn-gw export-profile --config endpoint.toml --pki pki --client alice --out alice.ovpn
ip netns exec $ns_g cvpn-gw serve --config endpoint.toml 2> gw.log & gw_pid=$!
for _ in $(seq 50); do grep -q "endpoint up" gw.log && break; sleep 0.1; done
grep -q "endpoint up" gw.log || { cat gw.log; exit 1; }

echo "== client"
ip netns exec $ns_c cvpn-client connect alice.ovpn > client.out 2> client.log & client_pid=$!
for _ in $(seq 100); do grep -q "connected to" client.out && break; sleep 0.1; done
cat client.out
grep -q "connected to" client.out || { cat client.log gw.log; exit 1; }
echo "== the client's routes"
ip -n $ns_c route
echo "== ping the target host through the tunnel"
ip netns exec $ns_c ping -c 3 192.168.1.20
echo "== live connections"
cvpn-gw connections --control "$work/cvpn-gw.sock"
kill "$client_pid"; wait "$client_pid" || true; client_pid=""
kill "$gw_pid"; wait "$gw_pid" || true; gw_pid=""
echo "== connection log"
cat connections.jsonl
echo "demo complete"
