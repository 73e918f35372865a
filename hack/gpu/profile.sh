#!/usr/bin/env bash
# Profiles the decode kernel variants on one shape with Nsight Compute, on
# the GPU machine: hack/gpu/profile.sh [variants [b h_q s_k]]
# (defaults: seesaw,wgmma 128 128 4096). Extra nvcc flags for a variant
# build: $PROFILE_NVCC_FLAGS. Reports go to $OUT (or ./gpu-results).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
variants=${1:-seesaw,wgmma}
shape=("${2:-128}" "${3:-128}" "${4:-4096}")
. hack/nvcc-flags.sh
# shellcheck disable=SC2086 # extra flags are words
nvcc "${MLA_NVCC_FLAGS[@]}" ${PROFILE_NVCC_FLAGS:-} -o /tmp/mla_profile hack/gpu/mla_bench.cu "${MLA_BENCH_LIBS[@]}" || exit 1
for v in ${variants//,/ }; do
	ncu --kernel-name "mla_decode_$v" --launch-skip 3 --launch-count 1 \
		--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
		--section WarpStateStats --section SchedulerStats --section SourceCounters \
		/tmp/mla_profile one "$v" "${shape[@]}" >"$OUT/ncu-$v.txt" 2>&1
	echo "== $v"
	grep -E 'Duration|Throughput|Pipe|Stall|Issued|Eligible|Active Warps|Bank|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth|one ' "$OUT/ncu-$v.txt" | head -n 60
done
