//go:build cuda

package cuda

// The driver calls gorgonia.org/cu lacks: raising a function's dynamic
// shared-memory limit above 48 KiB, launching with a by-value struct
// parameter (cu's Launch copies 8 bytes per parameter), and encoding the
// tensor map the seesaw kernel's bulk copies read.

/*
#cgo CFLAGS: -I${SRCDIR}/../../../kernels
#cgo LDFLAGS: -lcuda
#include <cuda.h>
#include "mla_decode_params.h"

static CUresult mla_set_max_dynamic_smem(CUfunction f, int bytes) {
	return cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes);
}

// cuLaunchKernel copies the parameter bytes before it returns, so params may
// point into Go memory (it holds no Go pointers).
static CUresult mla_launch(CUfunction f, unsigned gx, unsigned gy, unsigned block, unsigned smem,
                           CUstream stream, void* params) {
	void* args[1] = {params};
	return cuLaunchKernel(f, gx, gy, 1, block, 1, 1, smem, stream, args, NULL);
}

static int mla_sched_ints(int batch, int parts) { return MLA_SCHED_INTS(batch, parts); }

// cuTensorMapEncodeTiled came with CUDA 12 and the headers this package
// builds against are CUDA 11.8's, so it is looked up in the driver at run
// time and its types and enum values are spelled out here (CUDA 12's
// cuda.h: CUtensorMap is 128 bytes aligned to 64; BFLOAT16 = 9,
// INTERLEAVE_NONE = 0, SWIZZLE_128B = 3, L2_PROMOTION_L2_256B = 3,
// FLOAT_OOB_FILL_NONE = 0).
typedef struct { __attribute__((aligned(64))) unsigned char bytes[MLA_KV_MAP_BYTES]; } mla_tensor_map;
typedef CUresult (*mla_encode_tiled_fn)(mla_tensor_map*, int, cuuint32_t, void*, const cuuint64_t*, const cuuint64_t*,
                                        const cuuint32_t*, const cuuint32_t*, int, int, int, int);

// Encodes the map over rows x 576 bf16 at base (kernels/mla_decode_params.h,
// kv_map) and copies it to dst, MLA_KV_MAP_BYTES of device memory.
static CUresult mla_make_kv_map(CUdeviceptr dst, CUdeviceptr base, cuuint64_t rows) {
	void* sym = NULL;
	CUresult r = cuGetProcAddress("cuTensorMapEncodeTiled", &sym, 12000, CU_GET_PROC_ADDRESS_DEFAULT);
	if (r != CUDA_SUCCESS) return r;
	if (sym == NULL) return CUDA_ERROR_NOT_SUPPORTED;
	mla_tensor_map map;
	const cuuint64_t dims[2] = {MLA_HEAD_DIM, rows};
	const cuuint64_t strides[1] = {MLA_HEAD_DIM * 2};
	const cuuint32_t box[2] = {MLA_KV_MAP_BOX, MLA_KV_MAP_BOX};
	const cuuint32_t elem[2] = {1, 1};
	r = ((mla_encode_tiled_fn)sym)(&map, 9, 2, (void*)base, dims, strides, box, elem, 0, 3, 3, 0);
	if (r != CUDA_SUCCESS) return r;
	return cuMemcpyHtoD(dst, &map, sizeof(map));
}

static const char* mla_error_name(CUresult r) {
	const char* s = NULL;
	if (cuGetErrorName(r, &s) != CUDA_SUCCESS || s == NULL) return "unknown CUDA error";
	return s;
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/mla-operator/mla-operator/kernels"
)

// The shim includes kernels/mla_decode_params.h; kernels.ParamsHeader
// embeds it so that editing the header rebuilds this package (Go's build
// cache does not track headers outside the package directory).
var _ = kernels.ParamsHeader

// Sizes fixed by the kernels' ABI (mla_decode_params.h).
const (
	smemBytes     = int(C.MLA_SMEM_BYTES)
	decodeThreads = int(C.MLA_THREADS)
	tileRows      = int(C.MLA_TILE_ROWS)
)

type decodeParams = C.MlaDecodeParams
type rowCopyParams = C.MlaRowCopyParams

// decodeArgs is MlaDecodeParams in Go types.
type decodeArgs struct {
	q, cache, table, lens, out, lse, sched, partialOut, partialLSE, kvMap cu.DevicePtr
	batch, sq, heads, maxPages, parts, kvRow0                             int
	scale                                                                 float32
}

const log2e = 1.4426950408889634

func makeDecodeParams(a decodeArgs) decodeParams {
	return decodeParams{
		q:           C.uint64_t(a.q),
		cache:       C.uint64_t(a.cache),
		block_table: C.uint64_t(a.table),
		seq_lens:    C.uint64_t(a.lens),
		out:         C.uint64_t(a.out),
		lse:         C.uint64_t(a.lse),
		sched:       C.uint64_t(a.sched),
		partial_out: C.uint64_t(a.partialOut),
		partial_lse: C.uint64_t(a.partialLSE),
		batch:       C.int32_t(a.batch),
		s_q:         C.int32_t(a.sq),
		h_q:         C.int32_t(a.heads),
		max_pages:   C.int32_t(a.maxPages),
		num_parts:   C.int32_t(a.parts),
		scale:       C.float(a.scale),
		scale_log2:  C.float(a.scale * log2e),
		kv_row0:     C.int32_t(a.kvRow0),
		kv_map:      C.uint64_t(a.kvMap),
	}
}

func makeRowCopyParams(cache, rows, slots cu.DevicePtr, count int) rowCopyParams {
	return rowCopyParams{
		cache: C.uint64_t(cache),
		rows:  C.uint64_t(rows),
		slots: C.uint64_t(slots),
		count: C.int32_t(count),
	}
}

func cuErr(r C.CUresult, what string) error {
	if r == C.CUDA_SUCCESS {
		return nil
	}
	return fmt.Errorf("%s: %s (%d)", what, C.GoString(C.mla_error_name(r)), int(r))
}

// cfunc and cstream reach the driver handles inside cu's wrappers, which
// are single-field structs holding exactly those handles.
func cfunc(f cu.Function) C.CUfunction { return *(*C.CUfunction)(unsafe.Pointer(&f)) }
func cstream(s cu.Stream) C.CUstream   { return *(*C.CUstream)(unsafe.Pointer(&s)) }

func setMaxDynamicSharedMemory(f cu.Function, bytes int) error {
	return cuErr(C.mla_set_max_dynamic_smem(cfunc(f), C.int(bytes)), "cuFuncSetAttribute(max dynamic shared memory)")
}

func launchDecode(f cu.Function, gridX, gridY, block, smem int, s cu.Stream, p *decodeParams) error {
	return cuErr(C.mla_launch(cfunc(f), C.uint(gridX), C.uint(gridY), C.uint(block), C.uint(smem), cstream(s),
		unsafe.Pointer(p)), "cuLaunchKernel")
}

func launchRowCopy(f cu.Function, gridX, block int, s cu.Stream, p *rowCopyParams) error {
	return cuErr(C.mla_launch(cfunc(f), C.uint(gridX), 1, C.uint(block), 0, cstream(s), unsafe.Pointer(p)),
		"cuLaunchKernel")
}

func schedInts(batch, parts int) int { return int(C.mla_sched_ints(C.int(batch), C.int(parts))) }

// kvMapBytes is the device memory a cache's tensor map takes.
const kvMapBytes = int64(C.MLA_KV_MAP_BYTES)

// makeKVMap encodes the tensor map over rows cache rows at base into dst.
func makeKVMap(dst, base cu.DevicePtr, rows int64) error {
	return cuErr(C.mla_make_kv_map(C.CUdeviceptr(dst), C.CUdeviceptr(base), C.cuuint64_t(rows)), "cuTensorMapEncodeTiled")
}
