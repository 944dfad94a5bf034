#!/usr/bin/env bash
# Single sign-on benchmark (issue #27): how long from the daemon being asked to declare its
# realm (`lacave identity sync`, once Keycloak answers) to the first successful `kubectl` call
# of an OIDC user through kubelogin, and how long Keycloak itself takes to start, in the
# cluster lab (tests/identity.rs: a real Keycloak 26.7.3 on PyPI's JDK, the real kube-apiserver
# of a control plane the daemon joins, kubelogin v1.35.2 in password-grant mode). RUNS runs
# (default 3). No peer sets a realm up for comparison (the seed's way is a person in
# Keycloak's UI), so there is no ratio.
# Usage (root): bench/identity.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
require_root
. scripts/prereqs.sh
ensure_pytools
ensure_keycloak
ensure_kubelogin
RUNS=${1:-3}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo build -q -p lacave
echo "single sign-on, $(nproc) cores, $RUNS run(s):"
for i in $(seq "$RUNS"); do
    cargo test -q -p lacave-integration-tests --test identity -- --nocapture >"$log" 2>&1 \
        || { tail -50 "$log"; echo "the identity test failed" >&2; exit 1; }
    k=$(grep -E '^Keycloak answers' "$log" | sed -E 's/.* ([0-9.]+) s .*/\1/')
    r=$(grep -E '^realm declared' "$log" | sed -E 's/.* ([0-9.]+) s .*/\1/')
    f=$(grep -E '^first OIDC kubectl call' "$log" | sed -E 's/.*, ([0-9.]+) s after the sync/\1/')
    echo "  run $i: Keycloak started in $k s; realm declared in $r s; first OIDC kubectl call $f s after the sync"
done
