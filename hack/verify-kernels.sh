#!/usr/bin/env bash
# Fails when the CUDA kernel sources changed without a rebuilt module.
# Needs no nvcc: hack/build-kernels.sh (run on a Hopper machine) records the
# sources' hash in kernels/SOURCES.sha256 next to the compiled module; this
# recomputes it. With no kernel sources there is nothing to check.
set -euo pipefail
cd "$(dirname "$0")/.."

# kernel_sources lists, sorted, every file whose change requires a rebuild:
# the committed ones (what CI sees; a new source counts once it is added),
# or all of them outside a git checkout. hack/build-kernels.sh hashes the
# same set.
kernel_sources() {
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
		git ls-files -- 'kernels/*.cu' 'kernels/*.cuh' 'kernels/*.h' | { grep -v '^kernels/.*/' || true; } | LC_ALL=C sort
	else
		find kernels -maxdepth 1 -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' \) | LC_ALL=C sort
	fi
}

sources=$(kernel_sources)
if [[ -z "$sources" ]]; then
	echo "verify-kernels: no kernel sources"
	exit 0
fi

recorded=kernels/SOURCES.sha256
if [[ ! -f "$recorded" ]]; then
	echo "verify-kernels: $recorded missing; run 'make kernels' on a Hopper machine and commit the result" >&2
	exit 1
fi
want=$(grep -v '^#' "$recorded" | head -n1 | awk '{print $1}')
# Hash the list of (file hash, name) pairs so renames count too.
got=$(for f in $sources; do sha256sum "$f"; done | sha256sum | awk '{print $1}')
if [[ "$want" != "$got" ]]; then
	echo "verify-kernels: kernel sources changed since the module was built (recorded $want, now $got)." >&2
	echo "  Rebuild with 'make kernels' on a Hopper machine and commit kernels/ together." >&2
	exit 1
fi
for f in kernels/mla_decode.cubin kernels/mla_decode.resources.txt; do
	if [[ ! -s "$f" ]]; then
		echo "verify-kernels: $f missing or empty" >&2
		exit 1
	fi
done
echo "verify-kernels: kernels/ module matches its sources ($got)"
