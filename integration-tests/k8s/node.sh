#!/usr/bin/env bash
# One test node: run as PID 1 of its own PID, mount and UTS namespaces, inside the node's
# network namespace (the test creates that, with its address and a route to the test LAN only):
#   nsenter --net=/run/netns/NS unshare -m -p -f -u --propagation private --mount-proc \
#       node.sh DIR HOSTNAME IP SERVER_IP BIN IMAGES AUTHORIZED_KEY CONTROL_PLANE(0|1) POD_SUBNET
# It plays the installed Flatcar system as far as the join needs: private /etc, /root, /run,
# /var/lib, /var/log (what kubeadm, kubelet and containerd write stays in DIR), its own
# containerd with the images preloaded, a bridge CNI, the kubeadm/kubelet/kubectl binaries in
# /usr/local/bin with a systemctl stand-in, root's authorized key, and a real sshd with a host
# key of its own (written to DIR/ssh_host_ed25519_key.pub for the booted callback). It then
# waits: killing it ends every process of the node.
set -euo pipefail
D=$1 NAME=$2 IP=$3 SERVER=$4 BIN=$5 IMAGES=$6 KEY=$7 CP=$8 PODNET=$9
HERE=$(cd "$(dirname "$0")" && pwd)
hostname "$NAME"
mkdir -p "$D"/{etc-up,etc-work,varlib-up,varlib-work,opt-up,opt-work,kubelet,etcd,log,root/.ssh,bin,containerd}
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$D/etc-up,workdir=$D/etc-work" /etc
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$D/varlib-up,workdir=$D/varlib-work" /var/lib
# /opt/libexec/kubernetes: where kubelet and controller-manager look for volume plugins on
# Flatcar (whose /usr is read-only).
mkdir -p /opt
mount -t overlay overlay -o "lowerdir=/opt,upperdir=$D/opt-up,workdir=$D/opt-work" /opt
# kubelet's and etcd's own directories on a real file system (cadvisor stalls on overlayfs).
mkdir -p /var/lib/kubelet /var/lib/etcd
mount --bind "$D/kubelet" /var/lib/kubelet
mount --bind "$D/etcd" /var/lib/etcd
mount --bind "$D/log" /var/log
mount --bind "$D/root" /root
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/sshd
for b in kubeadm kubelet kubectl; do cp "$BIN/$b" "$D/bin/$b"; done
cp "$HERE/systemctl" "$HERE/systemd-sysext" "$HERE/update_engine_client" "$D/bin/"
mount --bind "$D/bin" /usr/local/bin
rm -rf /etc/kubernetes /etc/cni/net.d
mkdir -p /etc/kubernetes/manifests /etc/cni/net.d
printf 'nameserver %s\n' "$SERVER" > /etc/resolv.conf
printf '127.0.0.1 localhost\n%s %s\n' "$IP" "$NAME" > /etc/hosts
echo "$NAME" > /etc/hostname
sysctl -qw net.ipv4.ip_forward=1
# What Flatcar's kubelet.service gets from the node's OS: its own cgroup subtree here, so the
# kubelets of several test nodes on one kernel do not manage each other's pods.
printf 'KUBELET_EXTRA_ARGS="--cgroup-root=/lacave-%s"\n' "$NAME" > /etc/default/kubelet
for c in /sys/fs/cgroup/*/; do
    mkdir -p "$c/lacave-$NAME"
done
# A v1 cpuset group has no CPUs or memory nodes until given its parent's.
if [ -f /sys/fs/cgroup/cpuset/cpuset.cpus ]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus > "/sys/fs/cgroup/cpuset/lacave-$NAME/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems > "/sys/fs/cgroup/cpuset/lacave-$NAME/cpuset.mems"
fi
cat > /etc/cni/net.d/10-lacave-test.conflist <<CNI
{"cniVersion": "1.0.0", "name": "lacave-test", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$PODNET"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}, {"type": "loopback"}]}
CNI
containerd config default | sed \
    -e "s#sandbox_image = .*#sandbox_image = \"$(cat "${IMAGES%%:*}/pause-ref")\"#" \
    -e 's#bin_dir = "/opt/cni/bin"#bin_dir = "/usr/lib/cni"#' \
    -e "s#^root = .*#root = \"$D/containerd/root\"#" \
    -e "s#^state = .*#state = \"$D/containerd/state\"#" \
    -e 's#restrict_oom_score_adj = false#restrict_oom_score_adj = true#' \
    -e "s#config_path = \"\"#config_path = \"$D/certs.d\"#" \
    > "$D/containerd.toml"
# restrict_oom_score_adj: the test sandbox lacks CAP_SYS_RESOURCE, and runc cannot give the
# pause container its -998 without it.
containerd --config "$D/containerd.toml" > "$D/log/containerd.log" 2>&1 &
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
# registry.k8s.io through the daemon's registry (the test wrote the hosts.toml a node's final
# Ignition writes); a worker's kubelet pulls its pause image that way.
mkdir -p "$D/certs.d/registry.k8s.io"
[ -f "$D/registry-hosts.toml" ] && cp "$D/registry-hosts.toml" "$D/certs.d/registry.k8s.io/hosts.toml"
# IMAGES may name several directories (colon-separated: the upgrade test preloads both
# releases' control-plane images; nothing can be pulled here).
IFS=: read -ra image_dirs <<< "$IMAGES"
for dir in "${image_dirs[@]}"; do
    for image in "$dir"/*.tar; do
        [ "$CP" = 1 ] || continue
        ctr -n k8s.io images import "$image" > /dev/null
    done
done
install -m 600 /dev/null /root/.ssh/authorized_keys
printf '%s\n' "$KEY" > /root/.ssh/authorized_keys
rm -f /etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
cp /etc/ssh/ssh_host_ed25519_key.pub "$D/ssh_host_ed25519_key.pub"
cat > "$D/sshd_config" <<SSHD
ListenAddress $IP:22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile none
SSHD
/usr/sbin/sshd -D -e -f "$D/sshd_config" > "$D/log/sshd.log" 2>&1 &
touch "$D/up"
# PID 1 of the node: reap children until killed.
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $! || true; done
