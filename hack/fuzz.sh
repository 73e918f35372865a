#!/usr/bin/env bash
# Runs every fuzz target in the module for a while each (default 20s):
#   hack/fuzz.sh 1m
# `go test` already runs each target's seed corpus; this explores further.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-20s}
status=0
while IFS= read -r pkgdir; do
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$pkgdir"/*_test.go | sed 's/^func //' | sort -u); do
    echo "== $pkgdir $target ($fuzztime)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "./$pkgdir" || status=1
  done
done < <(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -r -n1 dirname | sed 's|^\./||' | sort -u)
exit $status
