#!/usr/bin/env bash
# Compiles the kernel sources' C++ on a machine without a Hopper toolkit,
# to catch C++ errors before a GPU machine's time is spent on them. Uses
# any nvcc (Debian's nvidia-cuda-toolkit is CUDA 11.8, which knows sm_90
# but not sm_90a): it compiles for sm_90 with the sm_90a feature macro set,
# so the wgmma and bulk-copy paths are parsed and instantiated, and stops at
# PTX, which nothing here can assemble (inline PTX text is not checked; only
# ptxas on the GPU machine does that).
#
#   hack/kernels-frontend.sh [source] [-Dname=value ...]
#
# Every macro set in $KERNEL_VARIANTS (default: as committed, and with the
# experiments on) is compiled, each with the extra -D options given.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || { echo "kernels-frontend: no $NVCC (apt-get install nvidia-cuda-toolkit)" >&2; exit 1; }
src=kernels/mla_decode.cu
if [[ $# -gt 0 && $1 != -D* ]]; then src=$1 && shift; fi
variants=${KERNEL_VARIANTS:-" ;-DMLA_TRACE;-DMLA_SEESAW_PAIR=1 -DMLA_EPILOGUE_QUAD=1"}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
IFS=';' read -ra sets <<<"$variants"
for set in "${sets[@]}"; do
	# shellcheck disable=SC2086 # a set is words
	if ! "$NVCC" -std=c++17 -arch=sm_90 -ptx -D__CUDA_ARCH_FEAT_SM90_ALL $set "$@" -o "$out/k.ptx" "$src" 2>"$out/log"; then
		echo "kernels-frontend: $src [${set# }] failed:" >&2
		grep -v 'Wno-deprecated-gpu-targets' "$out/log" >&2
		exit 1
	fi
	echo "kernels-frontend: $src [${set# }] ok"
done
