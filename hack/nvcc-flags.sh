# shellcheck shell=bash
# The nvcc options every build of the kernels uses (the committed module,
# the GPU benchmark, profiling builds, and the checks without a GPU), so
# that what is checked and timed is what is committed. Sourced.
MLA_ARCH_FLAGS=(-gencode arch=compute_90a,code=sm_90a)
MLA_NVCC_FLAGS=(-O3 -std=c++17 "${MLA_ARCH_FLAGS[@]}" -lineinfo)
# ptxas's report: registers, spills, local memory.
MLA_PTXAS_REPORT=(-Xptxas -v,-warn-spills,-warn-lmem-usage)
# The benchmark encodes the seesaw kernel's tensor map (cuTensorMapEncodeTiled).
MLA_BENCH_LIBS=(-lcuda)

# mla_nvcc_assembles_sm90a NVCC DIR: whether NVCC compiles for sm_90a (CUDA
# >= 12), probed with an empty kernel in DIR; the compiler's output goes to
# DIR/probe.log.
mla_nvcc_assembles_sm90a() {
	echo '__global__ void probe() {}' >"$2/probe.cu"
	"$1" -cubin "${MLA_ARCH_FLAGS[@]}" -o "$2/probe.cubin" "$2/probe.cu" >"$2/probe.log" 2>&1
}
