#!/usr/bin/env bash
# Installs lacave as a systemd service on Ubuntu/Debian: the binary in /usr/local/bin, the
# unit, and /etc/lacave/lacave.toml (kept if it exists). Run from a checkout, as root:
#   sudo deploy/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "deploy/install.sh: run as root (sudo)" >&2; exit 1; }

. scripts/prereqs.sh
ensure_build_tools
cargo build --release --locked -p lacave --bin lacave

install -D -m 0755 target/release/lacave /usr/local/bin/lacave
install -D -m 0644 systemd/lacave.service /etc/systemd/system/lacave.service
if [ ! -e /etc/lacave/lacave.toml ]; then
    install -D -m 0644 deploy/lacave.toml /etc/lacave/lacave.toml
    echo "installed /etc/lacave/lacave.toml: set server_ip to this host's provisioning address"
fi
/usr/local/bin/lacave check-config --config /etc/lacave/lacave.toml
systemctl daemon-reload
systemctl enable --now lacave.service
systemctl --no-pager status lacave.service || true
echo "API token: /var/lib/lacave/api-token (root can read it; 'sudo lacave node list' finds it)"
