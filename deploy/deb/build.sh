#!/usr/bin/env bash
# Builds the Debian package lacave_<version>_<arch>.deb with dpkg-deb (no debhelper needed):
#   deploy/deb/build.sh [--binary PATH] [--out DIR]
# Without --binary it builds the release binary first. The package holds /usr/bin/lacave, the
# unit (/lib/systemd/system/lacave.service), /etc/lacave/lacave.toml as a conffile (the
# example, kept across upgrades when edited), and maintainer scripts: postinst checks the
# configuration and starts (or restarts, on upgrade) the service only when it passes; purge
# removes the configuration and the state directory. Install with `apt install ./lacave_*.deb`.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin= out=target/deb
while [ $# -gt 0 ]; do
    case "$1" in
    --binary) bin=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    *) echo "deploy/deb/build.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$bin" ]; then
    cargo build --release --locked -p lacave --bin lacave
    bin=target/release/lacave
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$bin" "$stage/usr/bin/lacave"
install -d -m 0755 "$stage/lib/systemd/system"
sed 's|/usr/local/bin/lacave|/usr/bin/lacave|g' systemd/lacave.service > "$stage/lib/systemd/system/lacave.service"
chmod 0644 "$stage/lib/systemd/system/lacave.service"
install -D -m 0644 deploy/lacave.toml "$stage/etc/lacave/lacave.toml"
install -D -m 0644 README.md "$stage/usr/share/doc/lacave/README.md"
# Shell completions and man pages, generated from the command line's own definitions.
install -d -m 0755 "$stage/usr/share/bash-completion/completions" \
    "$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d" \
    "$stage/usr/share/man/man1"
"$bin" completions bash > "$stage/usr/share/bash-completion/completions/lacave"
"$bin" completions zsh > "$stage/usr/share/zsh/vendor-completions/_lacave"
"$bin" completions fish > "$stage/usr/share/fish/vendor_completions.d/lacave.fish"
"$bin" man --dir "$stage/usr/share/man/man1" 2>/dev/null
gzip -9n "$stage"/usr/share/man/man1/*.1
chmod 0644 "$stage"/usr/share/bash-completion/completions/lacave \
    "$stage"/usr/share/zsh/vendor-completions/_lacave \
    "$stage"/usr/share/fish/vendor_completions.d/lacave.fish "$stage"/usr/share/man/man1/*
cat > "$stage/usr/share/doc/lacave/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: lacave
Source: https://github.com/elfelip/kube-lacave

Files: *
License: Apache-2.0
 On Debian systems, the full text is in /usr/share/common-licenses/Apache-2.0.
COPY
install -d -m 0755 "$stage/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: lacave
Version: $version
Architecture: $arch
Maintainer: kube-lacave <lacave@users.noreply.github.com>
Installed-Size: $size
Depends: libc6 (>= 2.34), systemd
Recommends: ipxe
Section: admin
Priority: optional
Homepage: https://github.com/elfelip/kube-lacave
Description: provisioning appliance for bare-metal Kubernetes on Flatcar
 One daemon serving DHCP (full or proxy), TFTP, iPXE scripts, Ignition configs, an
 image mirror, an authoritative DNS zone and a cluster CA, which installs Flatcar
 Container Linux on registered machines and joins them to a Kubernetes cluster.
CONTROL
echo /etc/lacave/lacave.toml > "$stage/DEBIAN/conffiles"
install -m 0755 deploy/deb/postinst deploy/deb/prerm deploy/deb/postrm "$stage/DEBIAN/"
mkdir -p "$out"
deb="$out/lacave_${version}_${arch}.deb"
chmod 0755 "$stage"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
