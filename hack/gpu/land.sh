#!/usr/bin/env bash
# Takes a GPU run's kernel module into kernels/ here, once the run showed it
# correct: hack/gpu/run.sh's build, check and gotest stages (and promote,
# whose edited source comes along) wrote what this reads.
#
#   hack/gpu/land.sh RESULTS    RESULTS: the run's results.tgz, or a folder
#                               holding its r/ (or r/ itself)
#
# It refuses unless the run's float64 check passed ("check: all ok"), its Go
# GPU tests passed, and each sanitizer that ran reported no error. Then it
# copies the promoted source (r/promoted/, if any) and the module, its
# resource report and its sources' hash into kernels/, and checks with
# hack/verify-kernels.sh that the sources here are the ones the module was
# built from. Committing is left to the caller, with docs/benchmarks.md.
set -euo pipefail
[[ $# == 1 ]] || { sed -n '2,9p' "$0" >&2; exit 2; }
src=$(realpath "$1") # before the cd below, so a relative path works
cd "$(dirname "$0")/../.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A finished run leaves only results.tgz in its output folder.
[[ -d $src && ! -d $src/r && -f $src/results.tgz ]] && src=$src/results.tgz
if [[ -f $src ]]; then
	mkdir "$tmp/run" && tar -C "$tmp/run" -xzf "$src"
	src=$tmp/run
fi
[[ -d $src/r ]] && src=$src/r
[[ -d $src ]] || { echo "land: $1 is neither a results.tgz nor a folder" >&2; exit 2; }

fail() { echo "land: not landing: $*" >&2; exit 1; }
for f in mla_decode.cubin mla_decode.resources.txt SOURCES.sha256; do
	[[ -s $src/$f ]] || fail "$src has no $f (the run had no build stage)"
done
grep -q '^check: all ok' "$src/check.log" 2>/dev/null || fail "the float64 check did not pass ($src/check.log)"
grep -q '^PASS' "$src/gotest.log" 2>/dev/null || fail "the Go GPU tests did not pass ($src/gotest.log)"
for log in "$src"/sanitizer-*.log; do
	[[ -e $log ]] || continue
	# run.sh runs each tool with --error-exitcode and appends its exit status.
	[[ $(tail -n 1 "$log") == "compute-sanitizer exit 0" ]] || fail "$(basename "$log" .log) reported errors or did not finish ($log)"
done

# What is replaced is kept, to put back if the sources here turn out not to
# be the module's (git checkout would also drop uncommitted kernel edits).
mkdir "$tmp/kept"
cp kernels/mla_decode.cubin kernels/mla_decode.resources.txt kernels/SOURCES.sha256 "$tmp/kept/"
if [[ -d $src/promoted ]]; then
	for f in "$src"/promoted/*; do cp "kernels/$(basename "$f")" "$tmp/kept/"; done
	cp "$src"/promoted/* kernels/
	echo "land: kernel source from the run's promote stage: $(cd "$src/promoted" && echo *)"
	grep '^promoted ' "$src/promote.md" 2>/dev/null || true
fi
cp "$src/mla_decode.cubin" "$src/mla_decode.resources.txt" "$src/SOURCES.sha256" kernels/
if ! hack/verify-kernels.sh; then
	cp "$tmp"/kept/* kernels/
	echo "land: not landing: the run's module was not built from the kernel sources here (were the run's source edits" >&2
	echo "  applied here?); kernels/ is as it was." >&2
	exit 1
fi
sed -n 2p "$src/machine.txt" 2>/dev/null | sed 's/^/land: built and checked on: /' || true
echo "land: kernels/ updated; add the run's numbers to docs/benchmarks.md and commit kernels/ with the source."
