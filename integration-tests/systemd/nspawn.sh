#!/usr/bin/env bash
# The daemon under a real systemd: boots a Debian bookworm root file system with systemd as
# PID 1 under systemd-nspawn (private network), installs lacave with deploy/install.sh, then
# with the Debian package, and checks what an operator relies on. Run by tests/systemd.rs:
#   nspawn.sh ROOTFS_TAR LACAVE_BINARY LACAVE_DEB
# The container is offline: apt installs the package with --no-install-recommends.
# Network: the container has only its own loopback and one veth whose other end is in a
# network namespace this script creates (192.168.1.0/24 exists nowhere else); both go away
# with the container. Needs root, systemd-nspawn, nsenter, busybox, dig and tftp on the host.
set -euo pipefail
rootfs_tar=${1:?rootfs tarball} bin=${2:?lacave binary} deb=${3:?lacave .deb}
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /var/tmp/lacave-nspawn.XXXXXX)
root=$work/root
ns=lacli$$
machine=lacave-t$$
nspawn_pid= leader=

step() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'FAILED: %s\n' "$*" >&2
    if [ -n "$leader" ] && [ -e "/proc/$leader" ]; then
        cin journalctl -u lacave --no-pager -n 60 >&2 || true
    fi
    tail -20 "$work/console.log" >&2 || true
    exit 1
}
cin() { nsenter -t "$leader" -a -- "$@"; }
lacave() { cin lacave "$@"; }

stop_container() {
    [ -n "$nspawn_pid" ] && [ -e "/proc/$nspawn_pid" ] || return 0
    [ -n "$leader" ] && nsenter -t "$leader" -a -- systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 40); do [ -e "/proc/$nspawn_pid" ] || break; sleep 0.5; done
    [ -e "/proc/$nspawn_pid" ] && kill -9 "$nspawn_pid" 2>/dev/null || true
    leader=
}
cleanup() {
    stop_container
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

boot() {
    setsid systemd-nspawn --boot --directory="$root" --machine="$machine" \
        --register=no --keep-unit --private-network --resolv-conf=off \
        --console=passive --bind-ro="$work/src:/src" >"$work/console.log" 2>&1 </dev/null &
    nspawn_pid=$!
    for _ in $(seq 120); do
        leader=$(pgrep -P "$nspawn_pid" | head -1 || true)
        if [ -n "$leader" ]; then
            state=$(nsenter -t "$leader" -a -- systemctl is-system-running 2>/dev/null || true)
            # "starting" while lacave waits for its address (no network yet): booted enough.
            case "$state" in running | degraded | starting) return 0 ;; esac
        fi
        sleep 0.5
    done
    fail "the container did not boot"
}

# The container's LAN: veth lv0 (192.168.1.10/24) inside, lv1 in a host-side namespace.
net() {
    ip netns list | grep -qw "$ns" || ip netns add "$ns"
    ip -n "$ns" link set lo up
    nsenter -t "$leader" -n ip link add lv0 type veth peer name lv1 netns "$ns"
    nsenter -t "$leader" -n ip addr add 192.168.1.10/24 dev lv0
    nsenter -t "$leader" -n ip link set lv0 up
    ip -n "$ns" link set lv1 address 52:54:00:12:34:56
    ip -n "$ns" link set lv1 up
}

wait_active() {
    for _ in $(seq 120); do
        [ "$(cin systemctl is-active lacave 2>/dev/null || true)" = active ] && return 0
        sleep 0.5
    done
    fail "lacave is not active: $(cin systemctl is-active lacave || true)"
}

main_pid() { cin systemctl show -p MainPID --value lacave; }

step "root file system (cached debootstrap) and the files to install"
mkdir -p "$root" "$work/src/deploy" "$work/src/systemd"
tar -C "$root" -xf "$rootfs_tar"
echo lacavetest >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 lacavetest\n' >"$root/etc/hosts"
cp -a "$repo/deploy/." "$work/src/deploy/"
cp -a "$repo/systemd/." "$work/src/systemd/"
cp "$bin" "$work/src/lacave"
cp "$deb" "$work/src/"
mkdir -p "$root/srv/tftp"
head -c 300000 /dev/urandom >"$root/srv/tftp/ipxe.efi"
mkdir -p "$root/etc/lacave"
cat >"$root/etc/lacave/lacave.toml" <<'TOML'
state_dir = "/var/lib/lacave"
server_ip = "192.168.1.10"
[http]
listen = "0.0.0.0:8080"
[api]
listen = "0.0.0.0:8443"
tls = true
[dns]
listen = "192.168.1.10:53"
[tftp]
listen = "192.168.1.10:69"
root = "/srv/tftp"
[dhcp]
mode = "full"
interface = "lv0"
subnet = "192.168.1.0/24"
pool = "192.168.1.100-192.168.1.120"
TOML

step "boot Debian $(sed -n 's/^VERSION_ID="\(.*\)"/\1/p' "$root/etc/os-release") with systemd as PID 1, then the network"
boot
net

step "install with deploy/install.sh (Type=notify: active only once ready)"
cin /src/deploy/install.sh --binary /src/lacave >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "install.sh"; }
wait_active
[ "$(cin systemctl show -p Type --value lacave)" = notify ] || fail "not Type=notify"
cin bash -c '. /usr/local/share/bash-completion/completions/lacave && complete -p lacave' | grep -q lacave \
    || fail "install.sh: no bash completion for lacave"
cin test -s /usr/local/share/man/man1/lacave-cluster-upgrade.1 || fail "install.sh: no man pages"

step "state private under DynamicUser"
mode=$(cin stat -c %a /var/lib/private/lacave)
[ "$mode" = 700 ] || fail "state directory mode $mode"
if cin setpriv --reuid=65534 --regid=65534 --clear-groups cat /var/lib/lacave/api-token >/dev/null 2>&1; then
    fail "nobody can read the API token"
fi
out=$(cin setpriv --reuid=65534 --regid=65534 --clear-groups lacave --url https://lacavetest:8443 node list 2>&1) && fail "nobody listed nodes"
case "$out" in *"ermission denied"*) ;; *) fail "non-root error: $out" ;; esac
code=$(cin setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'lacave --url https://lacavetest:8443 node list >/dev/null 2>&1; echo $?' || true)
[ "$code" = 77 ] || fail "non-root exit $code, not 77 (a permission problem, not a bad configuration)"
ca_mode=$(cin stat -c %a /var/lib/private/lacave/pki/ca-chain.pem)
[ "$ca_mode" = 644 ] || fail "ca-chain.pem mode $ca_mode (it is public)"

step "the API over HTTPS, by the host's name"
lacave --url https://lacavetest:8443 node list >/dev/null || fail "HTTPS API by host name"
lacave node add --mac 52:54:00:12:34:56 --hostname kube01 --ip 192.168.1.21 --role worker >/dev/null

step "DHCP, TFTP and DNS answer a client on the container's LAN"
got=$(ip netns exec "$ns" busybox udhcpc -i lv1 -n -q -f -t 5 -s /bin/true 2>&1 || true)
case "$got" in *"192.168.1.21"*) ;; *) fail "DHCP: $got" ;; esac
ip -n "$ns" addr add 192.168.1.50/24 dev lv1
a=$(ip netns exec "$ns" dig +short +time=3 +tries=2 @192.168.1.10 kube01.lacave A)
[ "$a" = 192.168.1.21 ] || fail "DNS gave '$a'"
ip netns exec "$ns" tftp 192.168.1.10 -m binary -c get ipxe.efi "$work/got.efi"
cmp -s "$work/got.efi" "$root/srv/tftp/ipxe.efi" || fail "TFTP bytes differ"

step "systemd-analyze security (live)"
exposure=$(cin systemd-analyze security lacave --no-pager | sed -n 's/.*Overall exposure level for lacave.service: \([0-9.]*\).*/\1/p')
echo "exposure $exposure"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }' || fail "exposure $exposure > 2.0"

step "a node survives systemctl restart"
cin systemctl restart lacave
wait_active
lacave node list | grep -q kube01 || fail "kube01 lost on restart"

step "a bad configuration fails the unit without a restart loop"
cp "$root/etc/lacave/lacave.toml" "$work/good.toml"
echo 'not_a_key = 1' >>"$root/etc/lacave/lacave.toml"
cin systemctl restart lacave 2>/dev/null && fail "started with a bad configuration"
sleep 6
state=$(cin systemctl show -p ActiveState --value lacave)
restarts=$(cin systemctl show -p NRestarts --value lacave)
status=$(cin systemctl show -p ExecMainStatus --value lacave)
echo "after 6 s: $state, $restarts restarts, exit status $status"
[ "$state" = failed ] && [ "$restarts" = 0 ] && [ "$status" = 64 ] || fail "bad config: $state, $restarts restarts, status $status"
cp "$work/good.toml" "$root/etc/lacave/lacave.toml"
cin systemctl reset-failed lacave
cin systemctl start lacave
wait_active

step "an upgrade (install.sh again) restarts onto the new binary"
old=$(main_pid)
cin /src/deploy/install.sh --binary /src/lacave >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "install.sh (upgrade)"; }
wait_active
new=$(main_pid)
[ "$new" != "$old" ] || fail "still the old process $old"
exe=$(cin readlink "/proc/$new/exe")
case "$exe" in *deleted*) fail "running a deleted binary: $exe" ;; esac

step "a container reboot: the unit starts at boot and waits for its address"
cin systemctl reboot || true
for _ in $(seq 60); do [ -e "/proc/$nspawn_pid" ] || break; sleep 0.5; done
[ -e "/proc/$nspawn_pid" ] && fail "the container did not stop for its reboot"
ip netns del "$ns"
boot
sleep 2
before=$(cin systemctl is-active lacave || true)
echo "before the network: $before"
[ "$before" = activating ] || fail "lacave is '$before' with its address missing (want: activating, waiting)"
net
wait_active
[ "$(cin systemctl show -p NRestarts --value lacave)" = 0 ] || fail "restarted while waiting for its address"
lacave node list | grep -q kube01 || fail "kube01 lost across a reboot"

step "the Debian package: apt install, conffile, upgrade, broken config, purge"
cin systemctl disable --now lacave >/dev/null 2>&1
cin rm -rf /usr/local/bin/lacave /etc/systemd/system/lacave.service /etc/lacave /var/lib/lacave /var/lib/private/lacave
cin systemctl daemon-reload
debname=$(basename "$deb")
cin apt-get install -y --no-install-recommends "/src/$debname" >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "apt install"; }
wait_active
cin dpkg-query -W -f='${Conffiles}\n' lacave | grep -q /etc/lacave/lacave.toml || fail "lacave.toml is not a conffile"
for f in /usr/share/man/man1/lacave.1.gz /usr/share/man/man1/lacave-node-add.1.gz \
    /usr/share/bash-completion/completions/lacave /usr/share/zsh/vendor-completions/_lacave \
    /usr/share/fish/vendor_completions.d/lacave.fish; do
    cin dpkg -S "$f" >/dev/null 2>&1 || fail "the package does not hold $f"
done
lacave node list >/dev/null || fail "the packaged daemon's API"
old=$(main_pid)
cin apt-get install -y --no-install-recommends --reinstall "/src/$debname" >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "apt reinstall"; }
wait_active
[ "$(main_pid)" != "$old" ] || fail "the package upgrade did not restart the service"
cin systemctl stop lacave
echo 'not_a_key = 1' >>"$root/etc/lacave/lacave.toml"
cin apt-get install -y --no-install-recommends --reinstall -o Dpkg::Options::=--force-confold "/src/$debname" >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "apt reinstall (bad config)"; }
grep -q "does not pass check-config" "$work/apt.log" || { cat "$work/apt.log"; fail "postinst did not report the bad configuration"; }
sleep 3
state=$(cin systemctl is-active lacave || true)
[ "$state" = inactive ] || fail "a broken configuration was started anyway: $state"
cin apt-get purge -y lacave >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "apt purge"; }
for gone in /usr/bin/lacave /lib/systemd/system/lacave.service /etc/lacave /var/lib/private/lacave \
    /usr/share/man/man1/lacave.1.gz /usr/share/bash-completion/completions/lacave; do
    cin test -e "$gone" && fail "$gone is left after purge"
done
[ "$(cin systemctl is-active lacave || true)" != active ] || fail "still running after purge"

stop_container
echo
echo "systemd test: all checks passed"
