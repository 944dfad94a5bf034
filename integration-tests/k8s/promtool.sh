#!/usr/bin/env bash
# Builds Prometheus' promtool from the Go module proxy (release binaries cannot be downloaded
# here), cached outside the clone, keyed by version; prints its directory. The dashboards
# test checks the monitoring add-on's alert rules and dashboard expressions with it.
set -euo pipefail
VERSION=${PROMTOOL_VERSION:-v0.316.0}   # github.com/prometheus/prometheus v0.316.0 = Prometheus 3.16
OUT=${LACAVE_TEST_CACHE:-/var/cache/lacave-tests}/promtool-$VERSION
export PATH=$PATH:/usr/local/go/bin
[ -x "$OUT/promtool" ] && { echo "$OUT"; exit 0; }
command -v go >/dev/null || { echo "go is missing (needed to build promtool)" >&2; exit 1; }
src=$OUT/src
mkdir -p "$src"
cd "$src"
[ -f go.mod ] || go mod init lacave-tests/promtool >/dev/null 2>&1
go get -tool "github.com/prometheus/prometheus/cmd/promtool@$VERSION" >&2
CGO_ENABLED=0 nice -n 15 go build -p 2 -trimpath -ldflags "-s -w" -o "$OUT/promtool.tmp" \
    github.com/prometheus/prometheus/cmd/promtool
mv "$OUT/promtool.tmp" "$OUT/promtool"
echo "$OUT"
