#!/usr/bin/env bash
# Installs the Debian packages cvpn and its tests use, when missing.
set -euo pipefail
packages=(openssl iproute2 nftables iputils-ping iperf3 curl dnsmasq-base dnsutils procps faketime openvpn systemd logrotate protobuf-compiler libprotobuf-dev etcd-server)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
