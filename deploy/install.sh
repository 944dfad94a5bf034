#!/usr/bin/env bash
# Installs or upgrades lacave as a systemd service on Debian/Ubuntu: the binary in
# /usr/local/bin, the unit, and /etc/lacave/lacave.toml (kept if it exists). Run from a
# checkout, as root (sudo is not needed when you are root):
#   deploy/install.sh                  builds the release binary, then installs it
#   deploy/install.sh --binary PATH    installs a binary built beforehand
# Re-running it upgrades: a running service is restarted onto the new binary. A
# configuration that fails `lacave check-config` is reported and the service left alone.
# (The Debian package, deploy/deb/build.sh, is the other way; use one or the other.)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "deploy/install.sh: run as root (or with sudo)" >&2; exit 1; }

bin=
while [ $# -gt 0 ]; do
    case "$1" in
    --binary) bin=${2:?--binary needs a path}; shift 2 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "deploy/install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$bin" ]; then
    . scripts/prereqs.sh
    ensure_build_tools
    cargo build --release --locked -p lacave --bin lacave
    bin=target/release/lacave
fi
[ -x "$bin" ] || { echo "deploy/install.sh: $bin is not an executable" >&2; exit 1; }

# A new file renamed over the old one: a running daemon keeps its (now unlinked) binary
# until the restart below.
install -m 0755 "$bin" /usr/local/bin/.lacave.new
mv -f /usr/local/bin/.lacave.new /usr/local/bin/lacave
install -D -m 0644 systemd/lacave.service /etc/systemd/system/lacave.service
# Shell completions and man pages, generated from the command line's own definitions.
install -d -m 0755 /usr/local/share/bash-completion/completions \
    /usr/local/share/zsh/site-functions /usr/local/share/fish/vendor_completions.d \
    /usr/local/share/man/man1
/usr/local/bin/lacave completions bash > /usr/local/share/bash-completion/completions/lacave
/usr/local/bin/lacave completions zsh > /usr/local/share/zsh/site-functions/_lacave
/usr/local/bin/lacave completions fish > /usr/local/share/fish/vendor_completions.d/lacave.fish
/usr/local/bin/lacave man --dir /usr/local/share/man/man1 2>/dev/null
if [ ! -e /etc/lacave/lacave.toml ]; then
    install -D -m 0644 deploy/lacave.toml /etc/lacave/lacave.toml
    echo "installed /etc/lacave/lacave.toml: set server_ip (and [dns] listen) to this host's provisioning address"
fi
systemctl daemon-reload
systemctl enable lacave.service
if ! /usr/local/bin/lacave check-config --config /etc/lacave/lacave.toml; then
    echo "deploy/install.sh: /etc/lacave/lacave.toml is not valid (above); the service was not (re)started." >&2
    echo "  fix it, then: systemctl restart lacave" >&2
    exit 64
fi
started() {
    if ! systemctl "$1" lacave.service; then
        # e.g. "cannot listen on 0.0.0.0:53 (dns): Address already in use — … set [dns] listen
        # to this host's address": the daemon's own words, not just systemctl's.
        journalctl -u lacave.service -n 15 --no-pager -o cat >&2 || true
        echo "deploy/install.sh: lacave did not start (above); fix /etc/lacave/lacave.toml, then: systemctl restart lacave" >&2
        exit 1
    fi
}
if systemctl is-active --quiet lacave.service; then
    started restart
    echo "lacave restarted onto the new binary"
else
    started start
fi
systemctl --no-pager status lacave.service || true
echo "API token: /var/lib/lacave/api-token (root can read it; 'lacave node list' as root finds it)"
