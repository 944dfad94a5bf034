#!/usr/bin/env bash
# Registry benchmark (issue #13): CLIENTS concurrent pulls of one image with a MB-sized layer
# (manifest, config, layer; every digest checked by the client, lacave-pullbench), from
# Debian's docker-registry (distribution v2) and from lacave's /v2/, serving the same bytes, in
# a network namespace made for the run. lacave serves from its mirror listener (sendfile), as
# nodes are told to pull. Best of two runs each, alternating order. Prints both
# throughputs and the ratio lacave/docker-registry (higher is better).
# Usage (root): bench/registry-pull.sh [clients, default 20] [layer MB, default 100]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
CLIENTS=${1:-20}
MB=${2:-100}
require_tools docker-registry "scripts/test (as root) installs docker-registry"
cargo build --release --quiet -p lacave --bin lacave -p lacave-integration-tests --bin lacave-pullbench
bench_setup registry

# One image as an OCI layout: a random layer of MB megabytes, a config, a manifest.
python3 - "$work/layout" "$MB" <<'PY'
import hashlib, json, os, sys
out, mb = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{out}/blobs/sha256")
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(f"{out}/blobs/sha256/{d}", "wb").write(data)
    return "sha256:" + d, len(data)
layer = put(os.urandom(mb * 1000 * 1000))
config = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer[0]]}}).encode())
manifest = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0], "size": config[1]},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer[0], "size": layer[1]}]}).encode())
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": manifest[0], "size": manifest[1], "annotations": {"io.containerd.image.name": "bench.local/big:1"}}]},
    open(f"{out}/index.json", "w"))
open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion": "1.0.0"}')
# The same content in docker-registry's file-system storage layout.
reg = f"{out}/../distribution/docker/registry/v2"
for f in os.listdir(f"{out}/blobs/sha256"):
    os.makedirs(f"{reg}/blobs/sha256/{f[:2]}/{f}")
    os.link(f"{out}/blobs/sha256/{f}", f"{reg}/blobs/sha256/{f[:2]}/{f}/data")
repo = f"{reg}/repositories/big"
for d in (layer[0], config[0]):
    os.makedirs(f"{repo}/_layers/sha256/{d[7:]}"); open(f"{repo}/_layers/sha256/{d[7:]}/link", "w").write(d)
m = manifest[0]
os.makedirs(f"{repo}/_manifests/revisions/sha256/{m[7:]}"); open(f"{repo}/_manifests/revisions/sha256/{m[7:]}/link", "w").write(m)
os.makedirs(f"{repo}/_manifests/tags/1/current"); open(f"{repo}/_manifests/tags/1/current/link", "w").write(m)
os.makedirs(f"{repo}/_manifests/tags/1/index/sha256/{m[7:]}"); open(f"{repo}/_manifests/tags/1/index/sha256/{m[7:]}/link", "w").write(m)
PY

cat > "$work/registry.yml" <<YML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $work/distribution }, delete: { enabled: false } }
http: { addr: 127.0.0.1:5000 }
YML
ip netns exec "$ns" docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
cat > "$work/lacave.toml" <<TOML
state_dir = "$work/state"
[http]
listen = "127.0.0.1:8080"
mirror_listen = "127.0.0.1:8081"
TOML
mkdir -p "$work/state" && chmod 700 "$work/state"
in_ns target/release/lacave mirror images add "$work/layout" --config "$work/lacave.toml" >/dev/null
LACAVE_LOG=warn ip netns exec "$ns" target/release/lacave serve --config "$work/lacave.toml" 2>"$work/lacave.log" &
pids+=($!)
for _ in $(seq 100); do
    in_ns curl -sf http://127.0.0.1:8080/healthz >/dev/null && in_ns curl -sf http://127.0.0.1:5000/v2/ >/dev/null && break
    sleep 0.1
done

pull() { # name base query
    in_ns target/release/lacave-pullbench --base "$2" --repo big --tag 1 --query "$3" --clients "$CLIENTS" \
        | sed -n 's/.*: \([0-9.]*\) MB\/s$/\1/p'
}
best_reg=0 best_lac=0
for round in 1 2; do
    for who in $([ $round = 1 ] && echo "reg lac" || echo "lac reg"); do
        if [ $who = reg ]; then r=$(pull docker-registry http://127.0.0.1:5000 ""); best_reg=$(python3 -c "print(max($best_reg, $r))")
        else r=$(pull lacave http://127.0.0.1:8081 "?ns=bench.local"); best_lac=$(python3 -c "print(max($best_lac, $r))"); fi
        echo "round $round $who: $r MB/s"
    done
done
echo "docker-registry: $best_reg MB/s; lacave: $best_lac MB/s ($CLIENTS pulls of a $MB MB layer, best of 2)"
python3 -c "print(f'ratio lacave/docker-registry: {$best_lac / $best_reg:.2f}x (target >= 1.0x)')"
