#!/usr/bin/env bash
# Builds what the cluster tests run, from the Go module proxy and Debian only (release tarballs
# cannot be downloaded here): Kubernetes (kube-apiserver, controller-manager, scheduler,
# kubelet, kubeadm, kubectl, kube-proxy), etcd, etcdutl and the `pause` image's binary. The result is
# cached outside the clone, keyed by version, so a fresh clone (CI) reuses it:
#   $LACAVE_TEST_CACHE/k8s-$K8S_VERSION/bin   (default cache /var/cache/lacave-tests)
# First build: ~20 min on 2 cores; then nothing to do. Prints the bin directory.
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CACHE=${LACAVE_TEST_CACHE:-/var/cache/lacave-tests}/k8s-$K8S_VERSION
B=$CACHE/bin
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubeadm kubectl kube-proxy)
# scripts/prereqs.sh (ensure_go) puts a recent Go first on PATH; /usr/local/go otherwise.
export PATH=$PATH:/usr/local/go/bin
log() { echo "[k8s-build $(date +%T)] $*" >&2; }

done_marker=$B/.complete-$ETCD_VERSION-etcdutl
if [ -f "$done_marker" ]; then echo "$B"; exit 0; fi
command -v go >/dev/null || { echo "go is missing (needed to build Kubernetes from the module proxy)" >&2; exit 1; }
mkdir -p "$B" "$CACHE/src"

minor=$(echo "$K8S_VERSION" | cut -d. -f2)
staging=${K8S_VERSION/v1./v0.}
LD="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
d=$CACHE/src/k8s; mkdir -p "$d"; cd "$d"
if [ ! -f go.sum ]; then
    # k8s.io/kubernetes replaces its staging modules with ./staging/...: point them at the
    # published v0.x tags of the same release instead.
    go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
    { printf 'module lacave-tests/k8s\n\ngo 1.26.0\n\ngodebug default=go1.26\n\nreplace (\n'
      sed -n '/^replace (/,/^)/p' "$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod" \
          | grep '=>' | awk -v v="$staging" '{print "\t"$1" => "$1" "v}'
      echo ')'; } > go.mod
    go get -tool $(for c in "${COMPONENTS[@]}"; do echo "k8s.io/kubernetes/cmd/$c@$K8S_VERSION"; done)
fi
for c in "${COMPONENTS[@]}"; do
    [ -x "$B/$c" ] && continue
    s=$(date +%s)
    CGO_ENABLED=0 nice -n 15 go build -p 2 -trimpath -tags providerless -ldflags "$LD" -o "$B/$c.tmp" "k8s.io/kubernetes/cmd/$c"
    mv "$B/$c.tmp" "$B/$c"
    log "built $c in $(( $(date +%s) - s ))s"
done
# etcd's modules have replace directives, so `go install …@v` refuses them: each tool is built
# as a dependency of a scratch module instead.
build_etcd_tool() { # binary module
    [ -x "$B/$1" ] && return 0
    local d=$CACHE/src/etcd
    mkdir -p "$d"
    (cd "$d"
     [ -f go.mod ] || go mod init lacave-tests/etcd >/dev/null 2>&1
     go get -tool "$2@$ETCD_VERSION"
     CGO_ENABLED=0 nice -n 15 go build -p 2 -trimpath -ldflags "-s -w" -o "$B/$1.tmp" "$2")
    mv "$B/$1.tmp" "$B/$1"
    log "built $1"
}
build_etcd_tool etcd go.etcd.io/etcd/server/v3
# etcdutl (snapshot restore), in the etcd image as in registry.k8s.io/etcd: the daemon's
# restore runs it from that image on the control plane.
build_etcd_tool etcdutl go.etcd.io/etcd/etcdutl/v3
# The pause container: kubernetes' own pause.c, static.
if [ ! -x "$B/pause" ]; then
    gcc -Os -static -DVERSION="$K8S_VERSION-lacave" -o "$B/pause" \
        "$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c"
fi
touch "$done_marker"
echo "$B"
