#!/usr/bin/env bash
# DNS benchmark (issue: authoritative DNS). In a network namespace it creates and removes:
#   1. starts a release lacave with DNS on 10.53.0.1, registers NODES nodes and a few CNAMEs;
#   2. copies its zones by AXFR into BIND (named) on 10.53.0.2: the same records, same serial;
#   3. checks that both give the same answer to every query of the mix (rcode, flags and
#      every section, compared record by record) before timing anything: BIND runs with its
#      defaults (minimal-responses no-auth-recursive), which send what lacave sends;
#   4. runs dnsperf against each with the same query mix (A, CNAME chain, SOA, NXDOMAIN,
#      NODATA), twice each in alternating order (BIND, lacave, lacave, BIND), and prints
#      both raw figures of every run, the best of each, and the lacave/BIND ratios:
#      throughput, and the server's CPU time per query.
# Usage (root): bench/dns.sh [seconds per run, default 15] [dnsperf clients, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
SECONDS_PER_RUN=${1:-15}
CLIENTS=${2:-20}
NODES=${NODES:-50}
require_tools dnsperf named dig "sudo scripts/test installs dnsperf, bind9, bind9-dnsutils"

cargo build --release --quiet -p lacave --bin lacave
bench_setup dns
in_ns ip addr add 10.53.0.1/32 dev lo
in_ns ip addr add 10.53.0.2/32 dev lo
in_ns ip addr add 10.53.0.9/32 dev lo

cat > "$work/lacave.toml" <<TOML
state_dir = "$work/state"
server_ip = "10.53.0.1"
[http]
listen = "10.53.0.1:8080"
[dns]
listen = "10.53.0.1:53"
axfr_allow = ["10.53.0.9"]
TOML
# Started with `ip netns exec` directly (not a shell function), so that $! is the server.
LACAVE_LOG=warn ip netns exec "$ns" target/release/lacave serve --config "$work/lacave.toml" 2>"$work/lacave.log" &
pids+=($!)
lacave_pid=$!
for _ in $(seq 100); do in_ns curl -fsS http://10.53.0.1:8080/healthz >/dev/null 2>&1 && break; sleep 0.1; done
export LACAVE_URL=http://10.53.0.1:8080 LACAVE_TOKEN=$(cat "$work/state/api-token")
for i in $(seq 1 "$NODES"); do
    role=worker; [ "$i" -le 3 ] && role=control-plane
    in_ns target/release/lacave node add --mac "$(printf '52:54:00:00:%02x:%02x' $((i / 256)) $((i % 256)))" \
        --hostname "$(printf 'kube%02d' "$i")" --ip "192.168.1.$((i + 10))" --role $role >/dev/null
done
for svc in login dashboard grafana; do in_ns target/release/lacave dns add "$svc.kube" CNAME kube >/dev/null; done
in_ns target/release/lacave dns add nexus CNAME kube >/dev/null

# The same zones for BIND, by AXFR from lacave.
zones=$(in_ns dig -b 10.53.0.9 @10.53.0.1 lacave AXFR +noall +answer | awk '$4=="PTR"{split($1,a,"."); print a[2]"."a[3]"."a[4]".in-addr.arpa"}' | sort -u)
conf="$work/named.conf"
echo "options { directory \"$work\"; pid-file \"$work/named.pid\"; session-keyfile \"$work/session.key\"; listen-on port 53 { 10.53.0.2; }; listen-on-v6 { none; }; recursion no; dnssec-validation no; allow-query { any; }; };" > "$conf"
for z in lacave $zones; do
    in_ns dig -b 10.53.0.9 @10.53.0.1 "$z" AXFR +noall +answer | awk 'NR==1 || $4!="SOA"' > "$work/$z.zone"
    echo "zone \"$z\" { type primary; file \"$work/$z.zone\"; };" >> "$conf"
done
ip netns exec "$ns" named -g -c "$conf" -n 2 >"$work/named.log" 2>&1 &
pids+=($!)
named_pid=$!
for _ in $(seq 100); do in_ns dig @10.53.0.2 kube01.lacave +short +time=1 +tries=1 2>/dev/null | grep -q . && break; sleep 0.2; done
serial_ours=$(in_ns dig @10.53.0.1 lacave SOA +short | awk '{print $3}')
serial_bind=$(in_ns dig @10.53.0.2 lacave SOA +short | awk '{print $3}')
echo "zone lacave: serial $serial_ours (lacave) / $serial_bind (BIND), $(wc -l < "$work/lacave.zone") records, $NODES nodes"

# The query mix: A, CNAME chains, SOA, NXDOMAIN, NODATA (20% each).
q="$work/queries"
: > "$q"
for i in $(seq 1 "$NODES"); do
    printf 'kube%02d.lacave A\nlogin.kube.lacave A\nlacave SOA\nnope%d.lacave A\nkube%02d.lacave AAAA\n' "$i" "$i" "$i" >> "$q"
done

# Equal work first: every distinct query of the mix gets the same answer from both servers
# (header flags and rcode, and each section's records, order aside; the query id aside),
# asked as dnsperf asks: recursion desired, no EDNS.
answer() { # server name type
    in_ns dig @"$1" "$2" "$3" +nocookie +noedns +time=2 +tries=1 \
        +noall +comments +answer +authority +additional |
        awk '/HEADER/ { sub(/.*status: /, ""); sub(/, id: [0-9]+/, ""); print "status: " $0; next }
             /^;; flags:/ { sub(/^;; /, ""); print; next }
             /^;/ || NF == 0 { next }
             { print | "sort" }'
}
mismatch=0
for query in "kube01.lacave A" "login.kube.lacave A" "lacave SOA" "nope1.lacave A" "kube01.lacave AAAA" "kube.lacave A"; do
    set -- $query
    if ! diff <(answer 10.53.0.1 "$1" "$2") <(answer 10.53.0.2 "$1" "$2") >"$work/diff" 2>&1; then
        echo "DIFFERENT ANSWERS to $query (< lacave, > BIND):" >&2
        cat "$work/diff" >&2
        mismatch=1
    fi
done
[ "$mismatch" = 0 ] || { echo "the servers do different work: no timing" >&2; exit 1; }
echo "answers checked: lacave and BIND send the same records for every query of the mix"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # name, address, pid
    local before after out qps lat ticks hz
    hz=$(getconf CLK_TCK)
    before=$(cpu_ticks "$3")
    out=$(in_ns dnsperf -s "$2" -d "$q" -c "$CLIENTS" -l "$SECONDS_PER_RUN" -q 500 2>&1)
    after=$(cpu_ticks "$3")
    qps=$(echo "$out" | awk '/Queries per second/ {print $4}')
    lat=$(echo "$out" | awk '/Average Latency/ {print $4}')
    local done lost
    done=$(echo "$out" | awk '/Queries completed/ {print $3}')
    lost=$(echo "$out" | awk '/Queries lost/ {print $3}')
    ticks=$((after - before))
    local us_per_q
    us_per_q=$(awk -v t="$ticks" -v hz="$hz" -v d="$done" 'BEGIN { printf "%.1f", t / hz * 1e6 / d }')
    printf '%-7s %10.0f queries/s  avg latency %7.3f ms  completed %s lost %s  server CPU %s us/query\n' \
        "$1" "$qps" "$(awk -v l="$lat" 'BEGIN{print l*1000}')" "$done" "$lost" "$us_per_q" >&2
    echo "$qps $us_per_q"
}
echo "dnsperf: $CLIENTS clients, ${SECONDS_PER_RUN}s each, $(nproc) cores shared by server and client"
# Best of two, alternating order: highest throughput and lowest CPU per query of each.
best() { # name, then "qps cpu" lines
    awk '{ if ($1 > q) q = $1; if (c == "" || $2 < c) c = $2 } END { print q, c }'
}
r1=$(run BIND 10.53.0.2 "$named_pid")
r2=$(run lacave 10.53.0.1 "$lacave_pid")
r3=$(run lacave 10.53.0.1 "$lacave_pid")
r4=$(run BIND 10.53.0.2 "$named_pid")
read -r bind_qps bind_cpu < <(printf '%s\n%s\n' "$r1" "$r4" | best)
read -r ours_qps ours_cpu < <(printf '%s\n%s\n' "$r2" "$r3" | best)
echo "best of two: BIND $bind_qps queries/s, $bind_cpu us/query; lacave $ours_qps queries/s, $ours_cpu us/query"
awk -v o="$ours_qps" -v b="$bind_qps" -v oc="$ours_cpu" -v bc="$bind_cpu" \
    'BEGIN { printf "RESULT lacave/BIND throughput %.2fx, CPU per query %.2fx (lower is better)\n", o / b, oc / bc }'
