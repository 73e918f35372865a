#!/usr/bin/env bash
# Compiles kernels/mla_decode.cu for Hopper (sm_90a) into the module the Go
# engine embeds, and records beside it the resource report and the sources'
# hash that hack/verify-kernels.sh checks. Needs nvcc >= 12.8 (run it on the
# GPU machine, e.g. through hack/gpu/run.sh); commit kernels/ afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-nvcc}
. hack/nvcc-flags.sh
out=kernels/mla_decode.cubin
report=kernels/mla_decode.resources.txt

"$NVCC" --version | tail -n 2
"$NVCC" -cubin "${MLA_NVCC_FLAGS[@]}" "${MLA_PTXAS_REPORT[@]}" \
	-o "$out" kernels/mla_decode.cu 2>kernels/.ptxas.log || { cat kernels/.ptxas.log >&2; exit 1; }
cat kernels/.ptxas.log

{
	echo "# Resource usage of $out ($("$NVCC" --version | tail -n1), ${MLA_ARCH_FLAGS[*]})"
	echo "# Regenerate with 'make kernels'; REG = registers per thread, SHARED = static shared memory"
	echo "# (the decode kernels also take $(grep -o 'MLA_SMEM_BYTES.*' kernels/mla_decode_params.h | head -n1) dynamic)."
	cuobjdump --dump-resource-usage "$out" | sed -e 's/^[[:space:]]*//'
	echo
	echo "# ptxas -v"
	grep -v -e "^$" -e "Compile time = " kernels/.ptxas.log | sed -e "s/^ptxas info *: //"
} >"$report"
rm -f kernels/.ptxas.log

# Same hash as hack/verify-kernels.sh.
sources=$(find kernels -maxdepth 1 -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' \) | LC_ALL=C sort)
hash=$(for f in $sources; do sha256sum "$f"; done | sha256sum | awk '{print $1}')
{
	echo "$hash"
	echo "# sha256 of the kernel sources' sha256sum lines, recorded by hack/build-kernels.sh"
	for f in $sources; do sha256sum "$f"; done | sed -e 's/^/# /'
} >kernels/SOURCES.sha256
echo "built $out ($(stat -c %s "$out") bytes), sources $hash"
