#!/usr/bin/env bash
# Renders the third-party add-ons into plain manifests, at development time only (the daemon
# never runs Helm and never reaches a network). Rerun it to update a version: change the pin
# below, run, review the diff, update the add-on's SOURCE.md.
#
#   resources/vendor.sh SOURCES_DIR
#
# SOURCES_DIR holds git clones named owner+name/repo (what `git clone --mirror` of each
# upstream gives, e.g. SOURCES_DIR/cert-manager+cert-manager/repo). `helm` v3.19 must be on
# PATH (`go install helm.sh/helm/v3/cmd/helm@v3.19.0`).
set -euo pipefail

SOURCES=${1:?usage: resources/vendor.sh SOURCES_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

CERT_MANAGER=v1.21.1
HEADLAMP=v0.45.0
TRAEFIK_CHART=v41.3.0
METRICS_SERVER=v0.9.0
KUBE_PROMETHEUS=v0.18.0
LOCAL_PATH_PROVISIONER=v0.0.37
BUSYBOX=1.37.0
# Helm renders for this Kubernetes (the daemon's default, [cluster] kubernetes_version).
KUBE_VERSION=v1.37.2

# extract REPO TAG PATH: the tree PATH of REPO at TAG, into $WORK/REPO; prints the commit.
extract() {
    local repo=$1 tag=$2 path=$3 git="$SOURCES/$1/repo"
    mkdir -p "$WORK/$repo"
    git -C "$git" archive "$tag" "$path" | tar -x -C "$WORK/$repo"
    git -C "$git" show "$tag:LICENSE" > "$WORK/$repo/LICENSE"
    git -C "$git" rev-parse "$tag^{commit}"
}

header() { # header ADDON SOURCE COMMIT COMMAND
    printf '# Rendered by resources/vendor.sh from %s (commit %s):\n# %s\n' "$2" "$3" "$4"
}

# --- cert-manager: its chart, CRDs included; the startup API check is a Helm hook Job.
commit=$(extract cert-manager+cert-manager "$CERT_MANAGER" deploy/charts/cert-manager)
chart="$WORK/cert-manager+cert-manager/deploy/charts/cert-manager"
# The repository's Chart.yaml gets its version at release time.
printf 'version: %s\nappVersion: %s\n' "$CERT_MANAGER" "$CERT_MANAGER" >> "$chart/Chart.yaml"
args=(template cert-manager "$chart" --kube-version "$KUBE_VERSION" --namespace cert-manager --set crds.enabled=true
      --set startupapicheck.enabled=false)
{ header cert-manager "github.com/cert-manager/cert-manager $CERT_MANAGER" "$commit" "helm ${args[*]}"
  helm "${args[@]}"; } > "$HERE/cert-manager/cert-manager.yaml"
cp "$WORK/cert-manager+cert-manager/LICENSE" "$HERE/cert-manager/LICENSE"

# --- Traefik: the ingress controller, one per node on ports 80/443 (no load balancer on a
# bare-metal LAN), control planes included so a one-node cluster has its console.
commit=$(extract traefik+traefik-helm-chart "$TRAEFIK_CHART" traefik)
args=(template traefik "$WORK/traefik+traefik-helm-chart/traefik" --kube-version "$KUBE_VERSION" --namespace traefik
      --include-crds --set deployment.kind=DaemonSet --set ports.web.hostPort=80 --set ports.websecure.hostPort=443
      --set service.type=ClusterIP --set ingressClass.isDefaultClass=true
      --set 'tolerations[0].key=node-role.kubernetes.io/control-plane'
      --set 'tolerations[0].operator=Exists' --set 'tolerations[0].effect=NoSchedule')
{ header ingress "github.com/traefik/traefik-helm-chart $TRAEFIK_CHART" "$commit" "helm ${args[*]}"
  helm "${args[@]}"; } > "$HERE/ingress/traefik.yaml"
cp "$WORK/traefik+traefik-helm-chart/LICENSE" "$HERE/ingress/LICENSE"

# --- Headlamp: the cluster's web UI. People log in with a token; Headlamp's own account
# gets no cluster-admin binding.
commit=$(extract kubernetes-sigs+headlamp "$HEADLAMP" charts/headlamp)
args=(template headlamp "$WORK/kubernetes-sigs+headlamp/charts/headlamp" --kube-version "$KUBE_VERSION" --namespace headlamp
      --set clusterRoleBinding.create=false)
{ header dashboard "github.com/kubernetes-sigs/headlamp $HEADLAMP" "$commit" "helm ${args[*]}"
  helm "${args[@]}"; } > "$HERE/dashboard/headlamp.yaml"
cp "$WORK/kubernetes-sigs+headlamp/LICENSE" "$HERE/dashboard/LICENSE"

# --- metrics-server (kubectl top, autoscaling). Kubelets serve certificates from the cluster
# CA (serverTLSBootstrap, their CSRs approved by the daemon: daemon/src/cluster/csr.rs), so
# metrics-server checks them: no --kubelet-insecure-tls.
commit=$(extract kubernetes-sigs+metrics-server "$METRICS_SERVER" charts/metrics-server)
args=(template metrics-server "$WORK/kubernetes-sigs+metrics-server/charts/metrics-server" --kube-version "$KUBE_VERSION"
      --namespace kube-system --set image.tag="$METRICS_SERVER"
      --set 'args[0]=--kubelet-preferred-address-types=InternalIP')
{ header metrics-server "github.com/kubernetes-sigs/metrics-server $METRICS_SERVER" "$commit" "helm ${args[*]}"
  helm "${args[@]}"; } > "$HERE/metrics-server/metrics-server.yaml"
cp "$WORK/kubernetes-sigs+metrics-server/LICENSE" "$HERE/metrics-server/LICENSE"

# --- kube-prometheus: its pre-rendered manifests (jsonnet upstream), the operator, one
# Prometheus, node-exporter, kube-state-metrics, the control-plane monitors and Grafana with
# its dashboards (lacave's own are added by resources/monitoring/addon.toml). Left out:
# Alertmanager, blackbox-exporter, prometheus-adapter (metrics-server serves resource
# metrics).
commit=$(extract prometheus-operator+kube-prometheus "$KUBE_PROMETHEUS" manifests)
m="$WORK/prometheus-operator+kube-prometheus/manifests"
concat() { # concat OUT FILE...
    local out=$1; shift
    { header monitoring "github.com/prometheus-operator/kube-prometheus $KUBE_PROMETHEUS" "$commit" \
        "concatenation of manifests/$(basename "$out" .yaml) files (no change)"
      for f in "$@"; do echo "---"; echo "# $(basename "$f")"; cat "$f"; done; } > "$out"
}
concat "$HERE/monitoring/setup.yaml" "$m"/setup/*.yaml
concat "$HERE/monitoring/prometheus-operator.yaml" "$m"/prometheusOperator-*.yaml
concat "$HERE/monitoring/prometheus.yaml" "$m"/prometheus-*.yaml "$m"/kubePrometheus-prometheusRule.yaml \
    "$m"/kubernetesControlPlane-*.yaml
concat "$HERE/monitoring/node-exporter.yaml" "$m"/nodeExporter-*.yaml
concat "$HERE/monitoring/kube-state-metrics.yaml" "$m"/kubeStateMetrics-*.yaml
concat "$HERE/monitoring/grafana.yaml" "$m"/grafana-*.yaml
cp "$WORK/prometheus-operator+kube-prometheus/LICENSE" "$HERE/monitoring/LICENSE"

# --- local-path-provisioner: the default StorageClass, node-local volumes under
# /opt/local-path-provisioner (writable on Flatcar). Two edits, both printed in the header:
# the StorageClass is made the default, and the helper pod's busybox gets a pinned tag (an
# air-gapped site mirrors exact images).
vendor_storage() {
    local commit
    commit=$(extract rancher+local-path-provisioner "$LOCAL_PATH_PROVISIONER" deploy/local-path-storage.yaml)
    local edits="sed -e 's|^  name: local-path\$|  name: local-path\n  annotations:\n    storageclass.kubernetes.io/is-default-class: \"true\"|' -e 's|image: docker.io/library/busybox\$|image: docker.io/library/busybox:$BUSYBOX|'"
    { header storage "github.com/rancher/local-path-provisioner $LOCAL_PATH_PROVISIONER" "$commit" \
        "deploy/local-path-storage.yaml | $edits"
      sed -e 's|^  name: local-path$|  name: local-path\n  annotations:\n    storageclass.kubernetes.io/is-default-class: "true"|' \
          -e "s|image: docker.io/library/busybox\$|image: docker.io/library/busybox:$BUSYBOX|" \
          "$WORK/rancher+local-path-provisioner/deploy/local-path-storage.yaml"; } > "$HERE/storage/local-path-storage.yaml"
    cp "$WORK/rancher+local-path-provisioner/LICENSE" "$HERE/storage/LICENSE"
}
mkdir -p "$HERE/storage"
vendor_storage

echo "rendered; now: cargo test -p lacave addons:: (the image list in resources/README.md is checked)"
