# Shared by scripts/serve, scripts/test and deploy/install.sh: installs what building and
# testing lacave needs on Debian or Ubuntu. Sourced, not run.

# Packages the tests use, one per line with what needs it. Later features add theirs here.
TEST_PACKAGES=(
    build-essential   # cc, the linker rustc calls
    pkg-config
    ca-certificates
    curl              # bench scripts, health checks
    procps            # kill(1), used by the signal tests
    python3           # bench scripts pick free ports with it; DNS fuzzing sends with it
    iproute2          # ip netns: the DNS tests' namespaces
    openssl           # PKI tests: openssl verify, a CA and an intermediate made by OpenSSL
    bind9-dnsutils    # dig, the DNS client of the DNS tests
    bind9             # named: the second authoritative server of the DNS tests, and the DNS benchmark's baseline
    dnsperf           # DNS benchmark
    ipxe              # /usr/lib/ipxe: the boot binaries TFTP serves in the tests
    tftp-hpa          # TFTP client of the TFTP tests
    atftp             # second TFTP client (blksize, windowsize, tsize)
    tftpd-hpa         # TFTP benchmark's baseline
    isc-dhcp-client   # dhclient, DHCP client of the DHCP tests
    busybox-static    # udhcpc, second DHCP client; the stand-in Flatcar image's userland
    qemu-system-x86   # the QEMU boot tests (TCG)
    ipxe-qemu         # QEMU's iPXE ROM: the BIOS machine's PXE client
    ovmf              # UEFI firmware: the UEFI machine's own PXE client
    cpio              # packs the stand-in image's initramfs
    ndisc6            # rdisc6: solicits the router advertisements the DHCP tests expect
    kea-dhcp4-server  # DHCP benchmark's baseline
    kea-admin         # perfdhcp, the DHCP benchmark's load generator
    dnsmasq-base      # second DHCP baseline (the -base package starts no service)
    ignition          # ignition-validate and the real Ignition binary: the boot-flow tests apply our configs
    nginx-light       # boot-storm benchmark's baseline (its service is disabled below)
    openssh-server    # sshd: the real peer of the cluster join's SSH client
    containerd        # the cluster test's nodes: container runtime of the real kubelet
    runc
    containernetworking-plugins  # the nodes' bridge CNI
    iptables          # kubelet and kubeadm's preflight need these on a node
    conntrack
    ethtool
    socat
    ebtables
    ansible-core      # ansible-inventory reads the kubespray inventory the daemon writes
)

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs the Debian packages given that are missing; runs apt-get update only if needed.
ensure_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
        # Debian's bind9 and tftpd-hpa packages start host-wide services on systemd
        # machines; the tests and benchmarks run their own and need none.
        if [ -d /run/systemd/system ]; then
            for svc in named tftpd-hpa kea-dhcp4-server nginx ssh; do
                as_root systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
            done
        fi
    fi
}

# Rust: the workspace needs rustc >= 1.89 (edition 2024; russh and kube), newer than some distributions ship.
ensure_rust() {
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    if command -v cargo >/dev/null 2>&1; then
        local v
        v=$(rustc --version | awk '{print $2}')
        if [ "$(printf '%s\n' 1.89.0 "$v" | sort -V | head -1)" = 1.89.0 ]; then
            return
        fi
        echo "rustc $v is older than 1.89"
    fi
    echo "installing Rust with rustup (https://rustup.rs)"
    ensure_packages curl ca-certificates
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    . "$HOME/.cargo/env"
}

ensure_build_tools() {
    ensure_packages build-essential pkg-config ca-certificates
    ensure_rust
}

# Builds the stand-in Flatcar image the QEMU tests install (target/standin), unless it is
# newer than its sources.
ensure_standin() {
    local out=target/standin
    if [ -f "$out/flatcar_production_pxe_image.cpio.gz" ] \
        && [ "$out/flatcar_production_pxe_image.cpio.gz" -nt integration-tests/standin/init ] \
        && [ "$out/flatcar_production_pxe_image.cpio.gz" -nt integration-tests/standin/build.sh ]; then
        return
    fi
    integration-tests/standin/build.sh "$out"
}

# Builds (once, cached outside the clone by version: ~20 min the first time) the Kubernetes
# binaries and images the cluster test runs; needs Go >= 1.25 (/usr/local/go/bin/go).
ensure_k8s() {
    local bin
    bin=$(integration-tests/k8s/build.sh)
    integration-tests/k8s/images.sh "$bin" >/dev/null
}

