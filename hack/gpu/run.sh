#!/usr/bin/env bash
# The one script run on the GPU machine (Hopper, nvcc >= 12.8): builds the
# kernels, checks them (C++ float64 check, the Go engine's GPU tests,
# compute-sanitizer) and benchmarks them, in one go.
#
#   hack/gpu/run.sh [stage...]
#
# Stages run in this order, whatever order they are named in: ab promote
# build check gotest sanitize bench (all but ab and promote by default).
#
# ab times several builds of the benchmark side by side, alternating them
# for $AB_ROUNDS rounds (default 2) on the anchor shapes of $AB_HQ (else
# $BENCH_HQ, else all; e.g. AB_HQ=128 times only the h_q = 128 shapes while
# the bench stage of the same call covers all) for the kernels $AB_KERNELS
# (default seesaw). $AB lists the
# builds as label=flags, flags comma-separated nvcc options, and @dir first
# to build the kernel source in dir instead of the working tree's:
#   AB="head=@.gpu-bin/head new= slack4=-DMLA_SCHED_UNSPLIT_SLACK=4" hack/gpu/run.sh ab
# A label ending in "trace" is built with -DMLA_TRACE and prints the
# seesaw kernel's phases on each shape of $AB_TRACE ("b:h_q:s_k ...").
# Every other build first runs the float64 check (AB_CHECK=0 skips it); a
# build that fails it is reported and not timed. An earlier kernel version
# is timed beside the working tree's as a label built from its folder
# (AB="prev=@.gpu-bin/prev new=").
#
# promote makes one build's flags (-DNAME=VALUE, each a default in the
# kernel source) the source's defaults, for the stages after it to build,
# check and time the module to commit; $R/promoted/ gets the edited source.
# PROMOTE=auto (the default) takes the build hack/gpu/promote.py picks from
# this call's ab timings against $AB_BASE (default the first label): at
# least $PROMOTE_MARGIN (default 0.02, i.e. 2%) faster on the geometric
# mean of the shapes, and not 5% slower on any. Without a winner the run
# stops there. PROMOTE=label promotes that label of $AB without timings. One call can then go from experiments to a
# module ready to commit:
#   AB="head=@.gpu-bin/head new= c4s4=-DMLA_SEQ_OVERHEAD_BLOCKS=4,-DMLA_SCHED_UNSPLIT_SLACK=4" \
#     hack/gpu/run.sh ab promote build check gotest sanitize
#
# The Go test binary is built beforehand on a machine with Go and the CUDA
# headers (no GPU needed) and found at $GO_TEST_BIN (default
# .gpu-bin/cuda.test):
#   go test -c -tags cuda -o .gpu-bin/cuda.test ./worker/engine/cuda
# Results go to $OUT (or ./gpu-results): logs, the built module, the report.
set -uo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-$PWD/gpu-results}
R=$OUT/r
# A warm machine keeps an earlier call's folder: its check and test logs
# must not pass for this call's (hack/gpu/land.sh reads them).
rm -rf "$R" && mkdir -p "$R"
GO_TEST_BIN=${GO_TEST_BIN:-.gpu-bin/cuda.test}
stages=${*:-build check gotest sanitize bench}
for stage in $stages; do
	case $stage in
	ab | promote | build | check | gotest | sanitize | bench) ;;
	*) echo "unknown stage $stage (ab promote build check gotest sanitize bench)" >&2; exit 2 ;;
	esac
done
. hack/nvcc-flags.sh
status=0

has() { [[ " $stages " == *" $1 "* ]]; }
# pack refreshes $OUT/results.tgz, so a run cut short still returns its logs.
pack() { tar -C "$OUT" -czf "$OUT/results.tgz.tmp" r && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"; }
step() { pack; echo; echo "=== $* ($(date -u +%T))"; }
# stop ends the run with the logs so far: stop STATUS MESSAGE.
stop() { echo "$2"; pack; exit "$1"; }

# $AB, parsed once for the ab and promote stages: the labels in order, each
# label's nvcc options (commas to spaces) and the folder of the kernel
# source it builds instead of the working tree's (@dir), if any.
ab_labels=() && declare -A ab_flags ab_source
for spec in ${AB:-}; do
	label=${spec%%=*} flags=${spec#*=}
	[[ ! -v ab_flags[$label] ]] || { echo "AB names $label twice" >&2; exit 2; }
	flags=${flags//,/ }
	if [[ $flags == @* ]]; then
		dir=${flags%% *} && flags=${flags#"$dir"} && ab_source[$label]=${dir#@}
	fi
	ab_labels+=("$label") && ab_flags[$label]=$flags
done

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$R/machine.txt"
nvcc --version | tail -n 2 | tee -a "$R/machine.txt"

if has ab; then
	step "A/B builds: ${AB:-}"
	declare -A check_pid
	for label in "${ab_labels[@]}"; do
		flags=${ab_flags[$label]} src=()
		[[ -n ${ab_source[$label]:-} ]] && src=(-DMLA_KERNEL_SOURCE="\"$PWD/${ab_source[$label]}/mla_decode.cu\"")
		[[ $label == *trace ]] && flags="$flags -DMLA_TRACE"
		rm -f "/tmp/mla_ab_$label" # a warm machine keeps /tmp: no stale build may pass for this one
		# shellcheck disable=SC2086 # flags are words
		nvcc "${MLA_NVCC_FLAGS[@]}" $flags "${src[@]}" -o "/tmp/mla_ab_$label" hack/gpu/mla_bench.cu "${MLA_BENCH_LIBS[@]}" >"$R/ab-build-$label.log" 2>&1 &
	done
	wait
	timed=() traced=() # the builds that exist, to time or to trace
	for label in "${ab_labels[@]}"; do
		if [[ ! -x /tmp/mla_ab_$label ]]; then
			echo "A/B build $label failed:"; tail -n 20 "$R/ab-build-$label.log"; status=1
		elif [[ $label == *trace ]]; then
			traced+=("$label")
		else
			timed+=("$label")
		fi
	done
	if [[ ${AB_CHECK:-1} == 1 ]]; then
		# A build is timed only once its float64 check passed: a wrong
		# experiment's speed means nothing.
		# The checks run side by side: most of a check is its float64
		# reference on one CPU core, and the GPU has room for all of them.
		step "A/B checks"
		for label in "${timed[@]}"; do
			timeout 180 "/tmp/mla_ab_$label" check >"$R/ab-check-$label.log" 2>&1 &
			check_pid[$label]=$!
		done
		checked=()
		for label in "${timed[@]}"; do
			if wait "${check_pid[$label]}"; then
				echo "$label: check ok"
				checked+=("$label")
			else
				echo "$label: CHECK FAILED, not timed:"; grep -v ' ok$' "$R/ab-check-$label.log" | tail -n 15
				status=1
			fi
		done
		timed=("${checked[@]}")
	fi
	step "A/B timing"
	for round in $(seq "${AB_ROUNDS:-2}"); do
		for label in "${timed[@]}"; do
			# shellcheck disable=SC2086 # one word or none
			env ${AB_HQ:+BENCH_HQ=$AB_HQ} BENCH_QUICK=1 BENCH_LABEL="$label-" timeout 120 "/tmp/mla_ab_$label" bench "${AB_KERNELS:-seesaw}" | grep -E '^(\| [a-z]|pair kernel)'
		done
		echo "(round $round done)"
	done 2>&1 | tee "$R/ab.md"
	for label in "${traced[@]}"; do
		for shape in ${AB_TRACE:-128:128:4096}; do
			timeout 60 "/tmp/mla_ab_$label" one "${AB_KERNELS:-seesaw}" ${shape//:/ } | grep -E '^(one|trace)' | sed "s/^/$label /"
		done
	done 2>&1 | tee "$R/ab-trace.txt"
fi

if has promote; then
	# The build to land: its flags become the kernel source's defaults
	# (hack/gpu/promote.py apply), so that the build stage after this one
	# makes the module from that source and the rest check and time it.
	step "promote"
	winner=${PROMOTE:-auto} base=${AB_BASE:-${ab_labels[0]:-}}
	if [[ $winner == auto ]]; then
		[[ -s $R/ab.md ]] || stop 1 "PROMOTE=auto needs the ab stage's timings in this call"
		python3 hack/gpu/promote.py pick "$R/ab.md" "$base" --margin "${PROMOTE_MARGIN:-0.02}" | tee "$R/promote.md"
		pick_rc=${PIPESTATUS[0]}
		[[ $pick_rc == 0 || $pick_rc == 3 ]] || stop 1 "picking the build to promote failed"
		winner=$(tail -n 1 "$R/promote.md")
		[[ $winner != none ]] || stop "$status" "no build beat $base: nothing promoted, the stages after this one skipped"
	fi
	[[ -v ab_flags[$winner] ]] || stop 1 "PROMOTE=$winner is not a label of AB=${AB:-}"
	[[ -z ${ab_source[$winner]:-} ]] || stop 1 "$winner is built from another source (@${ab_source[$winner]}): only flags can be promoted"
	flags=${ab_flags[$winner]}
	# shellcheck disable=SC2086 # flags are words
	python3 hack/gpu/promote.py apply -f kernels/mla_decode.cu -f kernels/mla_decode_params.h -- $flags |
		tee -a "$R/promote.md" || stop 1 "promoting $winner failed"
	echo "promoted $winner ($flags)" | tee -a "$R/promote.md"
	mkdir -p "$R/promoted" && cp kernels/mla_decode.cu kernels/mla_decode_params.h "$R/promoted/"
fi

if has build; then
	# The module and the benchmark builds are independent: one at a time
	# they took most of a call's first minutes.
	step "build kernels and benchmark driver"
	rm -f /tmp/mla_bench /tmp/mla_bench_swapped # a warm machine keeps /tmp
	hack/build-kernels.sh >"$R/build.log" 2>&1 &
	kernels_pid=$!
	nvcc "${MLA_NVCC_FLAGS[@]}" -o /tmp/mla_bench hack/gpu/mla_bench.cu "${MLA_BENCH_LIBS[@]}" >"$R/bench-build.log" 2>&1 &
	bench_pid=$!
	nvcc "${MLA_NVCC_FLAGS[@]}" -DMLA_V_DESC_SWAPPED -o /tmp/mla_bench_swapped hack/gpu/mla_bench.cu "${MLA_BENCH_LIBS[@]}" >/dev/null 2>&1 &
	wait "$kernels_pid"
	kernels_rc=$?
	cat "$R/build.log"
	[[ $kernels_rc == 0 ]] || { wait; stop 1 "kernel build failed"; }
	wait "$bench_pid" || status=1
	wait
	cat "$R/bench-build.log"
	cp kernels/mla_decode.cubin kernels/mla_decode.resources.txt kernels/SOURCES.sha256 "$R/"
	grep -E 'Function|REG|spill|bytes stack' kernels/mla_decode.resources.txt | head -n 40
	cuobjdump -sass kernels/mla_decode.cubin >"$R/sass.txt"
	awk '/Function :/ {f=$3} /HGMMA/ {h[f]++} /HMMA/ {m[f]++} /LDL|STL/ {l[f]++}
		END {for (k in h) print k, "HGMMA", h[k]; for (k in m) print k, "HMMA", m[k]; for (k in l) print k, "LDL/STL", l[k]}' \
		"$R/sass.txt" | sort | tee "$R/sass-summary.txt"
	gzip -f "$R/sass.txt"
fi

if has check; then
	step "C++ check against float64"
	timeout 120 /tmp/mla_bench check 2>&1 | tee "$R/check.log" || status=1
	if ! grep -q 'check: all ok' "$R/check.log" && [[ -x /tmp/mla_bench_swapped ]]; then
		step "C++ check, V descriptor offsets swapped"
		timeout 120 /tmp/mla_bench_swapped check 2>&1 | tee "$R/check-swapped.log"
	fi
fi

if has gotest; then
	step "Go engine GPU tests (gorgonia.org/cu + shim)"
	MLA_CUDA_MODULE=kernels/mla_decode.cubin timeout 240 "$GO_TEST_BIN" -test.v -test.count=1 2>&1 | tee "$R/gotest.log" | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|relative L2' || true
	grep -q '^PASS' "$R/gotest.log" || status=1
	MLA_CUDA_MODULE=kernels/mla_decode.cubin timeout 120 "$GO_TEST_BIN" -test.run '^$' -test.bench . -test.benchtime 50x \
		2>&1 | tee "$R/gobench.log" | grep -E 'Benchmark|ok|FAIL' || true
fi

if has sanitize; then
	for tool in memcheck racecheck; do
		step "compute-sanitizer $tool"
		timeout 150 compute-sanitizer --tool "$tool" --error-exitcode 3 /tmp/mla_bench check >"$R/sanitizer-$tool.log" 2>&1
		rc=$?
		echo "compute-sanitizer exit $rc" >>"$R/sanitizer-$tool.log" # what hack/gpu/land.sh reads
		tail -n 6 "$R/sanitizer-$tool.log"
		[[ $rc == 0 ]] || status=1
	done
fi

if has bench; then
	step "benchmark"
	timeout 240 /tmp/mla_bench bench ${BENCH_ONLY:-} 2>&1 | tee "$R/bench.md" || status=1
fi

pack && rm -rf "$R"
echo "status $status"
exit $status
