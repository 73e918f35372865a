#!/usr/bin/env bash
# Prints the path of an nvcc that can assemble for Hopper (sm_90a), fetching
# one into a cache the first time. Developer machines have Debian 12's CUDA
# 11.8, which stops at sm_90 PTX; Debian 13 (trixie) packages CUDA 12.4,
# whose ptxas knows sm_90a, wgmma and the bulk tensor copies. Its packages
# are downloaded (not installed: the machine's own 11.8 toolkit and the
# headers gorgonia.org/cu builds against stay as they are) and unpacked
# under MLA_HOPPER_TOOLKIT (default ~/.cache/mla-operator/cuda-<version>).
#
# What this is for: assembling the kernels for sm_90a without a GPU machine,
# so ptxas errors in inline PTX, register spills and serialized-wgmma
# warnings show up before device time is spent, and building the GPU
# benchmark with them, so link errors do too (hack/kernels-frontend.sh).
# The committed module is still built on the GPU machine with its nvcc 13
# (hack/build-kernels.sh); a 12.4 cubin is for checking, never committed.
#
#   NVCC=$(hack/hopper-toolkit.sh) hack/kernels-frontend.sh
#
# With --path it prints instead a directory of wrappers (nvcc, cuobjdump,
# nvdisasm) to put first on PATH, for scripts that call the tools by name,
# such as a dry run of the GPU script's builds without a GPU:
#
#   PATH=$(hack/hopper-toolkit.sh --path):$PATH OUT=/tmp/dry hack/gpu/run.sh build ab
#
# (nvcc reads its profile from the directory it was called by, so a
# symbolic link would pick up the system's 11.8 headers: the wrappers exec
# the real binaries.)
set -euo pipefail
. "$(dirname "$0")/nvcc-flags.sh"

want_path=false
if [[ ${1:-} == --path ]]; then want_path=true; fi

suite=trixie
packages=(nvidia-cuda-toolkit nvidia-cuda-dev)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/mla-operator

# A private apt state, so the system's sources and lists are untouched.
apt_dir=$cache/apt-$suite
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
cat >"$apt_dir/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main contrib non-free
EOF
apt_opts=(
	-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
	-o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
	-o Debug::NoLocking=1 -o APT::Sandbox::User=root
)

version() { apt-cache "${apt_opts[@]}" show "$1" 2>/dev/null | awk '/^Version:/ {print $2; exit}'; }

# Reuse an unpacked toolkit without touching the network.
for dir in "${MLA_HOPPER_TOOLKIT:-}" "$cache"/cuda-*; do
	nvcc=$dir/usr/lib/nvidia-cuda-toolkit/bin/nvcc
	if [[ -n $dir && -x $nvcc && -f $dir/.complete && -f $dir/usr/lib/x86_64-linux-gnu/libcudart_static.a && -x $dir/wrap/nvcc ]]; then
		if $want_path; then echo "$dir/wrap"; else echo "$nvcc"; fi
		exit 0
	fi
done

echo "hopper-toolkit: fetching Debian $suite's CUDA toolkit (about 1 GB, once) into $cache" >&2
apt-get "${apt_opts[@]}" -q update >&2
v=$(version nvidia-cuda-toolkit)
[[ -n $v ]] || { echo "hopper-toolkit: Debian $suite offers no nvidia-cuda-toolkit" >&2; exit 1; }
dir=${MLA_HOPPER_TOOLKIT:-$cache/cuda-${v%%~*}}
# A half-unpacked toolkit of ours is replaced; anything else in the way is
# not ours to delete.
if [[ -d $dir && ! -f $dir/.complete && -n $(ls -A "$dir") && ! -e $dir/usr/lib/nvidia-cuda-toolkit ]]; then
	echo "hopper-toolkit: $dir exists and holds no toolkit of this script's; empty it or set MLA_HOPPER_TOOLKIT elsewhere" >&2
	exit 1
fi
rm -rf "$dir" && mkdir -p "$dir"
(cd "$apt_dir/debs" && rm -f ./*.deb && apt-get "${apt_opts[@]}" -q download "${packages[@]}" >&2)
for deb in "$apt_dir"/debs/nvidia-cuda-toolkit_*.deb; do dpkg-deb -x "$deb" "$dir"; done
# Of the development package only the headers and the runtime's static
# libraries (to link programs such as hack/gpu/mla_bench.cu) are needed;
# the rest, the math libraries, is most of its size.
for deb in "$apt_dir"/debs/nvidia-cuda-dev_*.deb; do
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" ./usr/include \
		./usr/lib/x86_64-linux-gnu/libcudart_static.a ./usr/lib/x86_64-linux-gnu/libcudadevrt.a \
		./usr/lib/x86_64-linux-gnu/libculibos.a
done
rm -f "$apt_dir"/debs/*.deb

# The package's nvcc.profile points at /etc and /usr; this one keeps the
# compiler, ptxas, libdevice and headers inside the unpacked tree, ahead of
# the system's 11.8 ones.
bin=$dir/usr/lib/nvidia-cuda-toolkit/bin
rm -f "$bin/nvcc.profile"
cat >"$bin/nvcc.profile" <<'EOF'
TOP = $(_HERE_)/../../../..
NVVMIR_LIBRARY_DIR = $(_HERE_)/../libdevice
PATH += $(_HERE_):$(TOP)/usr/bin:
INCLUDES += "-I$(TOP)/usr/include" $(_SPACE_)
LIBRARIES =+ $(_SPACE_) "-L$(TOP)/usr/lib/x86_64-linux-gnu"
EOF
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
mla_nvcc_assembles_sm90a "$bin/nvcc" "$probe" ||
	{ cat "$probe/probe.log" >&2; echo "hopper-toolkit: $bin/nvcc cannot compile for sm_90a" >&2; exit 1; }
mkdir -p "$dir/wrap"
for tool in "$bin/nvcc" "$dir/usr/bin/cuobjdump" "$dir/usr/bin/nvdisasm"; do
	printf '#!/bin/sh\nexec %q "$@"\n' "$tool" >"$dir/wrap/$(basename "$tool")"
	chmod +x "$dir/wrap/$(basename "$tool")"
done
touch "$dir/.complete"
echo "hopper-toolkit: $("$bin/nvcc" --version | tail -n 1) in $dir" >&2
if $want_path; then echo "$dir/wrap"; else echo "$bin/nvcc"; fi
