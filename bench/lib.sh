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

# A second namespace for the clients, joined to $ns by a veth pair; sets $cli, removed on exit
# with the rest (call after bench_setup).
client_netns() { # server-if client-if server-cidr client-cidr
    cli=lcv-bench-cli-$$
    ip netns add "$cli"
    trap 'bench_cleanup; ip netns del "$cli" 2>/dev/null || true' EXIT
    ip link add "$1" netns "$ns" type veth peer name "$2" netns "$cli"
    ip -n "$ns" addr add "$3" dev "$1"
    ip -n "$cli" addr add "$4" dev "$2"
    ip -n "$ns" link set "$1" up
    ip -n "$cli" link set "$2" up
    ip -n "$cli" link set lo up
}

# CPU accounting that includes every process a server forks (tftpd-hpa forks one per
# transfer and does not wait for them, so /proc/<pid>/stat's children times miss them): a
# cgroup per server, v1 cpuacct or v2, removed by cpu_group_cleanup.
cpu_group_new() { # name; prints the group's directory
    local dir
    if [ -d /sys/fs/cgroup/cpuacct ]; then
        dir=/sys/fs/cgroup/cpuacct/lcv-bench-$1-$$
    elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        dir=/sys/fs/cgroup/lcv-bench-$1-$$
    else
        dir=/sys/fs/cgroup/unified/lcv-bench-$1-$$
    fi
    mkdir -p "$dir"
    echo "$dir"
}
cpu_group_usage_us() { # dir: CPU time of every process that ran in it, in microseconds
    if [ -f "$1/cpuacct.usage" ]; then
        echo $(($(cat "$1/cpuacct.usage") / 1000))
    else
        awk '$1 == "usage_usec" { print $2 }' "$1/cpu.stat"
    fi
}
# Runs a command in a group: sh -c "$CPU_GROUP_EXEC" DIR COMMAND... & (not a shell function,
# so that $! is the command itself: sh execs it).
CPU_GROUP_EXEC='echo $$ > "$0/cgroup.procs" && exec "$@"'

cpu_group_cleanup() { # every group this run made (cpu_group_new runs in a subshell)
    for g in /sys/fs/cgroup/cpuacct/lcv-bench-*-$$ /sys/fs/cgroup/lcv-bench-*-$$ \
        /sys/fs/cgroup/unified/lcv-bench-*-$$; do
        [ -d "$g" ] && rmdir "$g" 2>/dev/null || true
    done
}
