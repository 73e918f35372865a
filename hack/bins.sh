#!/usr/bin/env bash
# Builds the local control plane from source into bin/: etcd, kube-apiserver,
# kube-scheduler, kube-controller-manager, kubectl and kwok. No download site
# is reachable from our machines, so envtest's usual release binaries cannot
# be fetched; the Go module proxy can, so we build.
#
# Builds are cached outside the checkout (MLA_BIN_CACHE, default
# ~/.cache/mla-operator/bin/<key>) keyed by the tools module's go.mod/go.sum
# and the Go version: a fresh clone on a machine that built them once copies
# them in seconds, and nothing is rebuilt unless its pins change.
#
# Usage: hack/bins.sh [name...]   (default: all)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bindir=${BIN_DIR:-$root/bin}
cache_root=${MLA_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mla-operator/bin}
mkdir -p "$bindir"

kube_version=v1.37.2
# ldflags that make the binaries report the version they were built from
# (kubectl warns about skew against an unversioned server otherwise).
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=37 -X $pkg.gitTreeState=clean"
done

# name -> "tools-module package"
declare -A src=(
  [etcd]="etcd go.etcd.io/etcd/server/v3"
  [kube-apiserver]="kubernetes k8s.io/kubernetes/cmd/kube-apiserver"
  [kube-scheduler]="kubernetes k8s.io/kubernetes/cmd/kube-scheduler"
  [kube-controller-manager]="kubernetes k8s.io/kubernetes/cmd/kube-controller-manager"
  [kubectl]="kubernetes k8s.io/kubernetes/cmd/kubectl"
  [kwok]="kwok sigs.k8s.io/kwok/cmd/kwok"
)
order=(etcd kube-apiserver kubectl kube-scheduler kube-controller-manager kwok)
[ $# -gt 0 ] && order=("$@")

key_of() { # tools module -> cache key
  cat "$root/hack/tools/$1/go.mod" "$root/hack/tools/$1/go.sum" "$0" | { go version; cat; } | sha256sum | cut -c1-16
}

# build_with_progress name module pkg out: go build, printing a line every
# 20 s with the packages compiled so far, so a 4-minute build is not silent.
build_with_progress() {
  local name=$1 mod=$2 pkg=$3 out=$4 log ldflags="-s -w"
  [ "$mod" = kubernetes ] && ldflags=$kube_ldflags
  log=$(mktemp)
  local start=$SECONDS
  ( cd "$root/hack/tools/$mod" && CGO_ENABLED=0 go build -v -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg" ) >"$log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    if (( (SECONDS - start) % 20 < 2 && SECONDS - start >= 20 )); then
      printf '  %s: %3ds, %d packages compiled, last: %s\n' "$name" $((SECONDS - start)) \
        "$(grep -vc '^#' "$log" || true)" "$(tail -n1 "$log" | cut -c1-70)"
      sleep 1
    fi
  done
  if ! wait "$pid"; then
    echo "bins: building $name failed:" >&2; tail -n 40 "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
  mv "$out.tmp" "$out"
  echo "  $name: built in $((SECONDS - start))s"
}

for name in "${order[@]}"; do
  [ -n "${src[$name]:-}" ] || { echo "bins: unknown binary $name" >&2; exit 2; }
  read -r mod pkg <<<"${src[$name]}"
  key=$(key_of "$mod")
  cached="$cache_root/$key/$name"
  stamp="$bindir/.$name.key"
  if [ -x "$bindir/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
    continue
  fi
  if [ ! -x "$cached" ]; then
    echo "bins: building $name from $pkg (cache miss; kube-apiserver takes ~4 min on 2 cores)"
    mkdir -p "$cache_root/$key"
    build_with_progress "$name" "$mod" "$pkg" "$cached"
  fi
  cp -f "$cached" "$bindir/$name.tmp" && mv -f "$bindir/$name.tmp" "$bindir/$name"
  echo "$key" >"$stamp"
  echo "bins: $name ready ($bindir/$name)"
done
