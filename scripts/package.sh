#!/usr/bin/env bash
# Builds the Debian package (cargo-deb) of the three binaries, the systemd
# units, the example configuration and the Grafana dashboard, and checks
# that `dpkg-deb -c` lists them. Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo build --release --workspace --bins
deb=$(cargo deb -p cvpn-gw --no-build --no-strip 2>&1 | tail -1)
[ -f "$deb" ] || { echo "cargo deb did not make a package: $deb" >&2; exit 1; }
listing=$(dpkg-deb -c "$deb")
for path in ./usr/bin/cvpn-gw ./usr/bin/cvpn-client ./usr/bin/cvpn-pki \
  ./lib/systemd/system/cvpn-gw.service ./lib/systemd/system/cvpn-client@.service \
  ./usr/share/doc/cvpn/examples/endpoint.toml ./usr/share/doc/cvpn/grafana/cvpn.json \
  ./etc/logrotate.d/cvpn-gw; do
  grep -q " $path\$" <<<"$listing" || { echo "$deb lacks $path:" >&2; echo "$listing" >&2; exit 1; }
done
echo "$deb"
