#!/usr/bin/env bash
# Builds the stand-in for Flatcar's PXE image the QEMU boot tests install (Flatcar itself
# cannot be downloaded here): Debian's kernel, and an initramfs holding busybox, the real
# Ignition binary from Debian's `ignition` package, curl, and `init` (this directory), which
# plays Flatcar's first boot and the installed system's, as PXE-LAB.md describes.
#
#   integration-tests/standin/build.sh OUTDIR
#
# OUTDIR gets flatcar_production_pxe.vmlinuz and flatcar_production_pxe_image.cpio.gz.
# Needs: apt-get (to download the kernel package), busybox-static, ignition, curl, cpio.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The kernel: whatever linux-image-amd64 depends on today.
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
pkg="$(kernel_pkg)"
if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg="$(kernel_pkg)"
fi
[ -n "$pkg" ] || { echo "build.sh: cannot find the kernel package behind linux-image-amd64" >&2; exit 1; }
(cd "$work" && apt-get download "$pkg" >/dev/null 2>&1 || apt-get download "$pkg")
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/kernel"
kver="${pkg#linux-image-}"
cp "$work/kernel/boot/vmlinuz-$kver" "$out/flatcar_production_pxe.vmlinuz"

root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib/modules,etc,proc,sys,dev,run,tmp,sysroot,disk,root}
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
# Flatcar has bash; busybox's ash runs the installer script (set -o pipefail included).
printf '#!/bin/sh\nexec /bin/sh "$@"\n' >"$root/bin/bash"
chmod +x "$root/bin/bash"
# virtio-net, in load order (Debian builds it as modules).
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net; do
    f="$(find "$work/kernel/lib/modules/$kver" -name "$m.ko*" | head -1)"
    [ -n "$f" ] || { echo "build.sh: module $m not found in $pkg" >&2; exit 1; }
    case "$f" in
        *.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
        *.zst) zstd -dqc "$f" >"$root/lib/modules/$m.ko" ;;
        *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
done
echo "$(ls "$root/lib/modules" | sed 's/\.ko$//' | tr '\n' ' ')" >/dev/null

# Dynamic binaries with every library they load.
copy_bin() {
    local src="$1" dst="$2"
    mkdir -p "$root/$(dirname "$dst")"
    cp -L "$src" "$root/$dst"
    ldd "$src" | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$root/$(dirname "$lib")"
        cp -Ln "$lib" "$root/$lib" 2>/dev/null || true
    done
}
copy_bin /usr/lib/dracut/modules.d/30ignition/ignition /usr/bin/ignition
copy_bin "$(command -v curl)" /usr/bin/curl
copy_bin /usr/sbin/usermod /usr/sbin/usermod
copy_bin /usr/sbin/useradd /usr/sbin/useradd
# curl's TLS stack wants its certificate bundle only for https; the mirror is plain HTTP.
printf '#!/bin/sh\ncat >/dev/null\n' >"$root/usr/sbin/setfiles"
chmod +x "$root/usr/sbin/setfiles"
cp "$here/init" "$root/init"
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/flatcar_production_pxe_image.cpio.gz"
echo "stand-in image: $out ($pkg, $(du -h "$out/flatcar_production_pxe_image.cpio.gz" | cut -f1) initramfs)"
