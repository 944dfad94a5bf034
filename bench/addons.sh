#!/usr/bin/env bash
# Add-on figures (issue #12), from the add-on integration test's own run against a real
# control plane (kubeadm init by the daemon) with kwok nodes:
#   - control plane Ready → every add-on applied and healthy (target ≤ 30 s)
#   - a pass over every add-on with nothing to change (target ≤ 1 s, zero writes: the test
#     fails if that pass writes anything)
# Root (network namespaces). Usage: sudo bench/addons.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
for i in $(seq "$runs"); do
    out=$(cd integration-tests && cargo test --test addons -- --nocapture 2>&1) || { echo "$out" | tail -40; exit 1; }
    echo "run $i:"
    echo "$out" | grep -E "control plane Ready → every add-on|a pass with nothing to change" | sed 's/^/  /'
done
