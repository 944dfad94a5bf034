# Shared by the benchmark scripts: root check, a network namespace made for the run (removed
# on exit with every process the run started), and a work directory. Sourced, not run.

require_root() {
    [ "$(id -u)" = 0 ] || { echo "$0: run as root (it makes a network namespace)" >&2; exit 1; }
}

require_tools() { # tool... ; the last argument is the hint
    local hint=${*: -1}
    for tool in "${@:1:$#-1}"; do
        command -v "$tool" >/dev/null || { echo "missing $tool: $hint" >&2; exit 1; }
    done
}

# Sets $work, $ns and the $pids array; call once.
bench_setup() { # tag
    work=$(mktemp -d "${BENCH_DIR:-$PWD/target}/bench-$1.XXXXXX")
    ns=lcv-bench-$1-$$
    pids=()
    trap bench_cleanup EXIT
    ip netns add "$ns"
    mkdir -p "/etc/netns/$ns" && echo "nameserver 127.0.0.1" > "/etc/netns/$ns/resolv.conf"
    ip -n "$ns" link set lo up
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns" "$work"
}

in_ns() { ip netns exec "$ns" "$@"; }
