#!/usr/bin/env bash
# Makes the container images a kubeadm node needs, from the binaries build.sh made (nothing can
# be pulled here), as OCI archives in $BIN/../images, named as `kubeadm config images list`
# says: kube-apiserver, -controller-manager, -scheduler and etcd from their binaries, pause from
# pause.c. kube-proxy and CoreDNS are left out on purpose: their pods stay pending in the test
# (kube-proxy would touch conntrack settings), which no node's Readiness depends on.
# Prints the images directory.
set -euo pipefail
BIN=$1
K8S_VERSION=${K8S_VERSION:-v1.37.2}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(dirname "$BIN")/images
[ -f "$OUT/.complete-etcdutl" ] && { echo "$OUT"; exit 0; }
mkdir -p "$OUT"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION" > "$work/list"
while read -r ref; do
    name=$(basename "${ref%%:*}")
    root=$work/$name; mkdir -p "$root/usr/local/bin"
    case $name in
        kube-apiserver|kube-controller-manager|kube-scheduler|etcd)
            cp "$BIN/$name" "$root/usr/local/bin/"
            # registry.k8s.io/etcd holds etcdutl too (the daemon's snapshot restore runs it).
            if [ "$name" = etcd ]; then cp "$BIN/etcdutl" "$root/usr/local/bin/"; fi
            python3 "$HERE/mkimage.py" "$OUT/$name.tar" "$ref" "$root" ;;
        pause)
            cp "$BIN/pause" "$root/pause"
            python3 "$HERE/mkimage.py" "$OUT/$name.tar" "$ref" "$root" /pause ;;
        *) ;;
    esac
done < "$work/list"
grep pause "$work/list" > "$OUT/pause-ref"
touch "$OUT/.complete-etcdutl"
echo "$OUT"
