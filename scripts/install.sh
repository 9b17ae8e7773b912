#!/usr/bin/env bash
# Build and install cvpn-pki, cvpn-gw and cvpn-client into /usr/local/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --workspace --bins
for b in cvpn-pki cvpn-gw cvpn-client; do
  install -m 0755 "target/release/$b" /usr/local/bin/
done
echo "installed: $(for b in cvpn-pki cvpn-gw cvpn-client; do command -v $b; done | tr '\n' ' ')"
# The main job: the whole quickstart in network namespaces.
bash scripts/demo.sh
