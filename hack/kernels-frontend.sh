#!/usr/bin/env bash
# Compiles the kernel sources on a machine without a GPU, to catch errors
# before a GPU machine's time is spent on them. Two depths, by the nvcc it
# is given:
#   - an nvcc that knows sm_90a (CUDA >= 12; hack/hopper-toolkit.sh fetches
#     one): the GPU benchmark (hack/gpu/mla_bench.cu, which includes the
#     kernels) built and linked the way hack/gpu/run.sh builds it, so ptxas
#     checks the inline PTX (wgmma, bulk copies, mbarriers) and reports
#     registers and spills, and host-side and link errors show too. Any
#     other warning (a serialized wgmma, a front-end warning) fails the run.
#   - any other nvcc (Debian 12's CUDA 11.8 knows sm_90, not sm_90a): sm_90
#     with the sm_90a feature macro set, stopping at PTX, so the wgmma and
#     bulk-copy paths are parsed and instantiated but the inline PTX text is
#     not checked.
#
#   hack/kernels-frontend.sh [source] [-Dname=value ...]
#
# Every macro set in $KERNEL_VARIANTS (sets separated by ';'; default: as
# committed, the trace build, and each experiment flag, found by its
# `#ifndef MLA_X  // ... (experiment)` line, turned alone to the side it
# does not default to: on where it defaults to 0, off where a promotion
# made it 1 and its old path is still in the source) is compiled, each with the extra -D options given; a failing set fails
# the run after the others are reported. KERNELS_DEPTH=sm_90a fails the
# run, with the compiler's word, where the nvcc given cannot assemble for
# sm_90a, instead of falling back to PTX.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || { echo "kernels-frontend: no $NVCC (apt-get install nvidia-cuda-toolkit, or NVCC=\$(hack/hopper-toolkit.sh))" >&2; exit 1; }
src=kernels/mla_decode.cu
if [[ $# -gt 0 && $1 != -D* ]]; then src=$1 && shift; fi
experiments=$(awk '/^#ifndef MLA_[A-Z0-9_]+ *\/\/.*\(experiment\)/ { name = $2; next }
	name != "" && $1 == "#define" && $2 == name { printf ";-D%s=%d", name, $3 == "0" ? 1 : 0 }
	{ name = "" }' "$src")
variants=${KERNEL_VARIANTS:-" ;-DMLA_TRACE$experiments"}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

. hack/nvcc-flags.sh
if mla_nvcc_assembles_sm90a "$NVCC" "$out"; then
	depth=sm_90a
	flags=("${MLA_NVCC_FLAGS[@]}" "${MLA_PTXAS_REPORT[@]}" -DMLA_KERNEL_SOURCE="\"$(realpath "$src")\"")
	inputs=(hack/gpu/mla_bench.cu "${MLA_BENCH_LIBS[@]}")
elif [[ ${KERNELS_DEPTH:-} == sm_90a ]]; then
	cat "$out/probe.log" >&2
	echo "kernels-frontend: $NVCC cannot assemble for sm_90a (KERNELS_DEPTH=sm_90a)" >&2
	exit 1
else
	depth=ptx
	flags=(-std=c++17 -arch=sm_90 -ptx -D__CUDA_ARCH_FEAT_SM90_ALL)
	inputs=("$src")
fi
echo "kernels-frontend: $("$NVCC" --version | tail -n 1), to $depth"

# compile N SET: one variant into $out/N.{log,rc}.
compile() {
	local rc=0
	# shellcheck disable=SC2086 # a set is words
	"$NVCC" "${flags[@]}" $2 "${extra[@]}" -o "$out/$1.out" "${inputs[@]}" >"$out/$1.log" 2>&1 || rc=$?
	echo $rc >"$out/$1.rc"
}

# report N SET: the variant's verdict; with sm_90a, each kernel's registers
# and spills as ptxas gave them.
report() {
	local name=$1 set=${2# } rc
	rc=$(cat "$out/$name.rc")
	if [[ $rc != 0 ]]; then
		echo "kernels-frontend: $src [$set] failed:" >&2
		grep -v 'Wno-deprecated-gpu-targets' "$out/$name.log" >&2
		return 1
	fi
	if [[ $depth == ptx ]]; then
		echo "kernels-frontend: $src [$set] ok"
		return 0
	fi
	# Spills are reported in the table below (a few bytes reloaded once per
	# piece cost nothing; where they sit decides, so look at the SASS);
	# any other warning, a serialized wgmma above all, fails.
	if grep 'warning' "$out/$name.log" | grep -v -e 'Registers are spilled' -e 'Local memory used' | grep -q .; then
		echo "kernels-frontend: $src [$set] assembled with warnings:" >&2
		grep 'warning' "$out/$name.log" >&2
		return 1
	fi
	echo "kernels-frontend: $src [$set] ok:"
	awk '
		/Compiling entry function/ { fn = $0; sub(/.*function .?/, "", fn); sub(/.? for .*/, "", fn) }
		/bytes stack frame/ { stack = $1; spills = $5 }
		/Used [0-9]+ registers/ && fn ~ /^mla_/ { for (i = 1; i <= NF; i++) if ($i == "Used") regs = $(i + 1); printf "    %-24s %3d registers, %s bytes stack, %s bytes spilled\n", fn, regs, stack, spills }
	' "$out/$name.log"
}

extra=("$@")
IFS=';' read -ra sets <<<"$variants"
# With sm_90a two sets at a time (a benchmark build takes about a minute on
# one core); the PTX-only pass takes seconds, one at a time.
jobs=2 && [[ $depth == ptx ]] && jobs=1
status=0
for ((i = 0; i < ${#sets[@]}; i += jobs)); do
	for ((j = i; j < i + jobs && j < ${#sets[@]}; j++)); do compile "v$j" "${sets[$j]}" & done
	wait
	for ((j = i; j < i + jobs && j < ${#sets[@]}; j++)); do report "v$j" "${sets[$j]}" || status=1; done
done
exit $status
