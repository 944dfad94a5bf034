#!/usr/bin/env bash
# Builds kwok (fake nodes whose pods become Running without images: nothing can be pulled here)
# from the Go module proxy, with the stages it needs (kwok >= 0.7 ships none in its binary:
# they come from its module source). Cached outside the clone, keyed by version:
#   $LACAVE_TEST_CACHE/kwok-$KWOK_VERSION/{kwok,stages.yaml}
# First build ~3 min on 2 cores. Prints the directory.
set -euo pipefail
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
D=${LACAVE_TEST_CACHE:-/var/cache/lacave-tests}/kwok-$KWOK_VERSION
export PATH=$PATH:/usr/local/go/bin
if [ -x "$D/kwok" ] && [ -s "$D/stages.yaml" ]; then echo "$D"; exit 0; fi
mkdir -p "$D"
GOBIN=$D CGO_ENABLED=0 nice -n 15 go install -p 2 -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2
S=$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
         pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"; cat "$S/$f"
done > "$D/stages.yaml.tmp"
mv "$D/stages.yaml.tmp" "$D/stages.yaml"
echo "$D"
