#!/usr/bin/env bash
# Omaha benchmark (issue #29): update checks answered per second by the daemon's
# `POST /v1/update/` and by Flatcar's own Go Omaha library's TrivialServer (go-omaha, the
# peer) side by side, both offering the same payload, both asked by the same load generator
# (integration-tests/omaha, go-omaha's request encoding) from a client namespace whose MAC is
# a registered node among NODES registered ones. Prints each rate, their ratio, and the node
# count each would serve: update_engine checks every 45 minutes (give or take 5), so a site of
# N nodes asks N / 2,700 times a second.
# Usage (root): bench/omaha.sh [nodes, default 2000] [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
. scripts/prereqs.sh
require_root
NODES=${1:-2000}
SECS=${2:-10}
CONCURRENCY=${CONCURRENCY:-16}
OLD=4230.2.3
NEW=4459.2.1
ensure_omaha_client
cargo build --release --quiet -p lacave --bin lacave
bench_setup omaha
client_netns omaha0 omaha1 10.75.0.1/24 10.75.0.50/24
ip -n "$cli" link set omaha1 down
ip -n "$cli" link set omaha1 address 52:54:00:75:00:01
ip -n "$cli" link set omaha1 up

# A release held verified with an 8 MB payload (its record written as lacave mirror fetch
# writes it: this measures the answers, not the fetch).
rel=$work/mirror/stable/amd64-usr/$NEW
mkdir -p "$rel"
head -c 8000000 /dev/urandom > "$rel/flatcar_production_update.gz"
ln -s "$NEW" "$work/mirror/stable/amd64-usr/current"
python3 - "$rel" "$NEW" <<'PY'
import base64, hashlib, json, os, sys
d, v = sys.argv[1], sys.argv[2]
data = open(os.path.join(d, "flatcar_production_update.gz"), "rb").read()
b64 = lambda h: base64.b64encode(h.digest()).decode()
json.dump({"version": v, "signer": "bench", "verified_at": "", "sha512": {}, "signed_at": {},
           "update": {"file": "flatcar_production_update.gz", "size": len(data),
                      "sha1_base64": b64(hashlib.sha1(data)),
                      "sha256_base64": b64(hashlib.sha256(data))}},
          open(os.path.join(d, ".verified"), "w"))
PY
mkdir -m 0700 "$work/state"
cat > "$work/lacave.toml" <<TOML
state_dir = "$work/state"
server_ip = "10.75.0.1"
[http]
listen = "10.75.0.1:8080"
[flatcar]
mirror_dir = "$work/mirror"
version = "current"
node_prefix = 16
TOML
LACAVE_LOG=warn ip netns exec "$ns" target/release/lacave serve --config "$work/lacave.toml" \
    >"$work/lacave.out" 2>"$work/lacave.log" &
pids+=($!)
daemon=$!
for _ in $(seq 100); do in_ns curl -sf http://10.75.0.1:8080/healthz >/dev/null && break; sleep 0.1; done
ip netns exec "$ns" "$LACAVE_OMAHA_CLIENT" serve -listen 10.75.0.1:8090 \
    -package "$rel/flatcar_production_update.gz" -version "$NEW" >"$work/peer.out" 2>&1 &
pids+=($!)
peer=$!

echo "registering $NODES nodes"
ip netns exec "$ns" python3 - "$NODES" "$work/state/api-token" <<'PY'
import http.client, json, sys
n, token = int(sys.argv[1]), open(sys.argv[2]).read().strip()
c = http.client.HTTPConnection("10.75.0.1", 8080)
for i in range(n):
    mac = "52:54:00:75:00:01" if i == 0 else "52:54:01:%02x:%02x:%02x" % (i >> 16 & 255, i >> 8 & 255, i & 255)
    body = json.dumps({"mac": mac, "hostname": "node%05d" % i,
                       "ip": "10.75.%d.%d" % (1 + i // 250, 1 + i % 250), "role": "worker"})
    c.request("POST", "/api/v1/nodes", body, {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status != 201:
        sys.exit("registering node %d: HTTP %d" % (i, r.status))
PY

run() { # name url
    ip netns exec "$cli" "$LACAVE_OMAHA_CLIENT" check -server "$2" -version "$OLD" | grep -q '"status":"ok"' ||
        { echo "$1 does not offer the update" >&2; exit 1; }
    ip netns exec "$cli" "$LACAVE_OMAHA_CLIENT" bench -server "$2" -version "$OLD" \
        -duration "${SECS}s" -concurrency "$CONCURRENCY" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["per_second"]))'
}
echo "machine: $(nproc) cores; $CONCURRENCY requests in flight; ${SECS} s per server; $NODES nodes registered"
ours=$(run lacave http://10.75.0.1:8080/v1/update/)
theirs=$(run go-omaha http://10.75.0.1:8090/v1/update/)
python3 - "$ours" "$theirs" <<'PY'
import sys
ours, theirs = int(sys.argv[1]), int(sys.argv[2])
print(f"lacave:   {ours:>7} update checks answered per second (node found by MAC, record read)")
print(f"go-omaha: {theirs:>7} update checks answered per second (TrivialServer: no registry)")
print(f"ratio lacave/go-omaha: {ours / theirs:.2f}")
print(f"nodes served at one check per 45 min: lacave {ours * 2700:,}, go-omaha {theirs * 2700:,}")
PY
echo "daemon peak RSS: $(grep VmHWM /proc/$daemon/status | awk '{print $2 " " $3}')"
