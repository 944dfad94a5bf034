#!/usr/bin/env bash
# etcd snapshot benchmark (issue #26). One etcd v3.6.16 with TLS (server certificate from the
# etcd CA of a cluster PKI the daemon's code made, client certificates required) on
# 127.0.0.1:2379 in a network namespace of its own, filled with MIB MiB of incompressible
# 64 KiB values. Then, alternately, RUNS times each:
#   - the daemon's snapshot (lacave-snapbench save: the code `lacave cluster snapshot save`
#     runs: etcd's status, Maintenance.Snapshot in gRPC over HTTP/2, written to disk,
#     checked against etcd's appended SHA-256, manifest, rename);
#   - the peer, `etcdctl snapshot save` (gRPC; it checks the same SHA-256);
#   - curl reading the same snapshot through etcd's JSON gateway to /dev/null: what etcd's
#     own JSON encoding costs (the daemon used the gateway at first: 2.85x etcdctl);
# and prints the median of each, their ratios to etcdctl, the files' sizes, and
# `etcdutl snapshot restore` of the daemon's file (its time, and that it restores).
# Usage (root): bench/etcd-snapshot.sh [MiB, default 256] [runs, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
require_tools openssl curl bc "apt-get install openssl curl bc"
MIB=${1:-256}
RUNS=${2:-3}
. scripts/prereqs.sh
ensure_k8s
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
BIN=$(integration-tests/k8s/build.sh)
# etcdctl, the peer: built once from the module proxy, beside the cluster test's etcd.
if [ ! -x "$BIN/etcdctl" ]; then
    export PATH="$(dirname "$(ensure_go)"):$PATH"
    d=$(dirname "$BIN")/src/etcd
    (cd "$d" && go get -tool "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION" &&
        CGO_ENABLED=0 nice -n 15 go build -p 2 -trimpath -ldflags "-s -w" -o "$BIN/etcdctl.tmp" go.etcd.io/etcd/etcdctl/v3)
    mv "$BIN/etcdctl.tmp" "$BIN/etcdctl"
fi
cargo build --release --quiet -p lacave-integration-tests --bin lacave-snapbench
SNAP=$PWD/target/release/lacave-snapbench
bench_setup etcdsnap
pki=$work/pki
in_ns "$SNAP" pki "$pki"
# etcd's server certificate for 127.0.0.1, from that etcd CA (kubeadm makes it so on a node).
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench-etcd \
    -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > "$work/ext"
openssl x509 -req -in "$work/server.csr" -CA "$pki/etcd/ca.crt" -CAkey "$pki/etcd/ca.key" \
    -CAcreateserial -days 1 -extfile "$work/ext" -out "$work/server.crt" 2>/dev/null
in_ns "$BIN/etcd" --name bench --data-dir "$work/etcd" \
    --listen-client-urls https://127.0.0.1:2379 --advertise-client-urls https://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster bench=http://127.0.0.1:2380 --quota-backend-bytes $((8 << 30)) \
    --cert-file "$work/server.crt" --key-file "$work/server.key" \
    --trusted-ca-file "$pki/etcd/ca.crt" --client-cert-auth > "$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    in_ns curl -s --cacert "$pki/etcd/ca.crt" --cert "$work/server.crt" --key "$work/server.key" \
        https://127.0.0.1:2379/health 2>/dev/null | grep -q true && break
    sleep 0.2
done
s=$(date +%s.%N)
in_ns "$SNAP" fill "$pki" "$MIB"
echo "filled etcd with $MIB MiB in $(echo "$(date +%s.%N) - $s" | bc) s"
ours=() theirs=() gateway=()
mkdir -p "$work/ours" "$work/theirs"
for run in $(seq "$RUNS"); do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    read -r t bytes name < <(in_ns "$SNAP" save "$pki" "$work/ours")
    ours+=("$t")
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    s=$(date +%s.%N)
    in_ns "$BIN/etcdctl" --endpoints https://127.0.0.1:2379 --cacert "$pki/etcd/ca.crt" \
        --cert "$work/server.crt" --key "$work/server.key" \
        snapshot save "$work/theirs/run$run.db" > /dev/null 2>&1
    theirs+=("$(echo "$(date +%s.%N) - $s" | bc)")
    s=$(date +%s.%N)
    in_ns curl -s --cacert "$pki/etcd/ca.crt" --cert "$work/server.crt" --key "$work/server.key" \
        -X POST -d '{}' https://127.0.0.1:2379/v3/maintenance/snapshot -o /dev/null
    gateway+=("$(echo "$(date +%s.%N) - $s" | bc)")
    echo "run $run: lacave ${ours[-1]} s ($bytes bytes), etcdctl ${theirs[-1]} s ($(stat -c %s "$work/theirs/run$run.db") bytes), curl of the gateway ${gateway[-1]} s"
    ours_file=$work/ours/$name
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mo=$(median "${ours[@]}"); mt=$(median "${theirs[@]}"); mg=$(median "${gateway[@]}")
echo "etcd snapshot of $MIB MiB, median of $RUNS: lacave $mo s, etcdctl snapshot save $mt s, ratio lacave/etcdctl $(echo "scale=2; $mo / $mt" | bc); curl of the JSON gateway alone $mg s ($(echo "scale=2; $mg / $mt" | bc)x etcdctl, lacave $(echo "scale=2; $mo / $mg" | bc)x it)"
"$BIN/etcdutl" snapshot status -w table "$ours_file" | sed 's/^/  /'
s=$(date +%s.%N)
"$BIN/etcdutl" snapshot restore "$ours_file" --data-dir "$work/restored" --name bench \
    --initial-cluster bench=http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --bump-revision 1000000000 --mark-compacted > /dev/null 2>&1
echo "etcdutl snapshot restore of lacave's file: $(echo "$(date +%s.%N) - $s" | bc) s ($(du -sm "$work/restored" | cut -f1) MiB data directory)"
