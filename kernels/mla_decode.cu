// MLA dense decode for Hopper (sm_90a): FlashMLA's contract, written from
// scratch for this project.
//
//   q      bf16 [b, s_q, h_q, 576]      cache  bf16 [pages, 64, 576] (one layer)
//   table  int32 [b, max_pages]         lens   int32 [b]
//   out    bf16 [b, s_q, h_q, 512]      lse    fp32 [b, h_q, s_q]
//
// Three launches on one stream, parameters in MlaDecodeParams:
//   mla_decode_schedule  one warp: balances the batch's 64-token KV blocks
//                        (plus a fixed per-sequence charge) over num_parts
//                        parts, one part per CTA column.
//   mla_decode_{mma,wgmma,seesaw}  grid (num_parts, query tiles): each CTA
//                        walks the blocks of its part for one 64-row query
//                        tile (rows are (s_q, h_q) flattened, so the heads
//                        sharing the latent head form the M dimension). A
//                        sequence that lies inside one part is written out
//                        directly; a split one leaves a normalized fp32
//                        partial and its log-sum-exp. mma and wgmma run the
//                        warpgroups in lockstep; seesaw (below) lets them
//                        take turns on pairs of blocks.
//   mla_decode_combine   merges the partials of split sequences.
//
// One fused pass per KV block: S = Q K^T over 576 dims, online softmax, O +=
// P V over the 512 latent dims (V is the first 512 columns of the same shared
// memory tile, never copied). 256 threads: warp w = 4 h + g owns query rows
// 16 g .. 16 g + 15, keys 32 h .. 32 h + 31 of S, and output columns
// 256 h .. 256 h + 255. The two halves exchange row maxima and P through
// shared memory. With wgmma, warps 4 h .. 4 h + 3 are warpgroup h and the
// accumulator fragments are the same as mma.sync's, so masking, softmax and
// the epilogue are shared by both variants.
//
// Shared tiles are 64 rows x 576 columns stored as nine 64 x 64 panels of
// 8 KiB, each row of a panel 128 bytes with its 16-byte chunks XOR-swizzled
// by (row % 8): the canonical 128-byte-swizzle layout of wgmma (K-major for
// Q and K, MN-major for V) and conflict-free for ldmatrix.
//
// Room left for later work: an FP8 cache changes only the tile load (and a
// dequantizing pass into the bf16 tile); sparse decode replaces the block
// walk by a walk over selected token indices.

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "mla_decode_params.h"

// Tells the benchmark driver this source has mla_decode_seesaw.
#define MLA_HAS_SEESAW 1

// The schedule kernel's constants, for launchers that predict its result
// on the host (the Go engine skips the combine launch where no sequence
// is split): tokens per block, the per-sequence charge in blocks, the
// unsplit slack. Read from the module, so a module built with other -D
// values is predicted with its own. Not const: a const variable at
// namespace scope has internal linkage, and the module could drop it.
#define MLA_HAS_SCHEDULE_CONSTANTS 1  // for the benchmark driver
extern "C" {
__device__ int mla_schedule_constants[3] = {MLA_PAGE, MLA_SEQ_OVERHEAD_BLOCKS, MLA_SCHED_UNSPLIT_SLACK};
}

// Experiments of v14, each off until an A/B run on a GPU shows it faster
// (docs/kernel-notes.md, v14).
#ifndef MLA_Q_FIRST  // a CTA's first Q load issued before its first block copies (experiment)
#define MLA_Q_FIRST 1
#endif
#ifndef MLA_EPI_STAGE1  // both warpgroups stage O in stage 1, stage 0 refills at once (experiment)
#define MLA_EPI_STAGE1 1
#endif
#ifndef MLA_STAGE1_AFTER_Q  // a CTA's first block 1 copied once its Q landed (experiment)
#define MLA_STAGE1_AFTER_Q 1
#endif
#ifndef MLA_PREFETCH_START  // L2 asked for a CTA's first Q and block-table row before the seek (experiment)
#define MLA_PREFETCH_START 1
#endif

namespace {

constexpr int kD = MLA_HEAD_DIM;
constexpr int kDV = MLA_LATENT_DIM;
constexpr int kBlock = MLA_PAGE;
constexpr int kRows = MLA_TILE_ROWS;
constexpr int kThreads = MLA_THREADS;
constexpr int kOverhead = MLA_SEQ_OVERHEAD_BLOCKS;
constexpr int kPanelBytes = 64 * 128;
constexpr int kTileBytes = MLA_TILE_BYTES;
constexpr int kChunksPerRow = kD / 8;                       // 72 chunks of 16 bytes
constexpr int kChunksPerThread = kRows * kChunksPerRow / kThreads;  // 18
static_assert(kRows * kChunksPerRow % kThreads == 0, "tile load must divide evenly");
static_assert(kTileBytes == 9 * kPanelBytes, "576 columns are nine 64-column panels");

__host__ __device__ constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }

// Byte offset of (row, col) in a swizzled tile; col is a multiple of 8.
__device__ __forceinline__ uint32_t tile_offset(int row, int col) {
  const int panel = col >> 6;
  const int chunk = (col >> 3) & 7;
  return panel * kPanelBytes + row * 128 + ((chunk ^ (row & 7)) << 4);
}

// 2^x on the special-function unit. exp2f() adds a denormal range check
// per call that ptxas chains through one predicate register, so a block's
// 32 exponentials ran one after another at MUFU latency; -inf still gives
// +0, and flushing denormal probabilities to zero is below bf16's
// resolution.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy global -> shared; src_bytes 0 writes zeros
// (rows past a sequence's end or past the query tile).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// Makes this thread's generic-proxy shared-memory writes (cp.async, st.shared)
// visible to the async proxy (wgmma) once a barrier follows.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Loads rows [0, valid_rows) of a 64 x 576 bf16 row-major block into a
// swizzled tile and zero-fills the rest, copied by kCopyThreads threads
// (thread index t). Consecutive threads copy consecutive 16-byte chunks, so
// the CTA streams the block in address order (a warp-per-row order with
// cheaper addressing measured 3-8% slower, v7).
template <int kCopyThreads, int kUnroll>
__device__ __forceinline__ void load_tile_async(uint32_t dst, const __nv_bfloat16* src, int valid_rows, int t) {
  constexpr int kChunks = kRows * kChunksPerRow / kCopyThreads;
  static_assert(kRows * kChunksPerRow % kCopyThreads == 0, "tile load must divide evenly");
#pragma unroll kUnroll
  for (int j = 0; j < kChunks; ++j) {
    const int i = t + j * kCopyThreads;
    const int row = i / kChunksPerRow;
    const int c16 = i % kChunksPerRow;
    const bool valid = row < valid_rows;
    const __nv_bfloat16* s = src + (valid ? row * kD + c16 * 8 : 0);
    const uint32_t off = (c16 >> 3) * kPanelBytes + row * 128 + (((c16 & 7) ^ (row & 7)) << 4);
    cp_async_16(dst + off, s, valid ? 16 : 0);
  }
}
// The whole CTA copies a tile (the lockstep kernels).
__device__ __forceinline__ void load_tile_async(uint32_t dst, const __nv_bfloat16* src, int valid_rows) {
  load_tile_async<kThreads, kChunksPerThread>(dst, src, valid_rows, threadIdx.x);
}

// ---------------------------------------------------------------- mma.sync

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// S[16 g + i, 32 h + j] = Q[16 g + i, :] . K[32 h + j, :] for this warp.
__device__ __forceinline__ void scores_mma(float (&s)[4][4], uint32_t q_tile, uint32_t k_tile, int g, int h) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int t = 0; t < 4; ++t)
#pragma unroll
    for (int j = 0; j < 4; ++j) s[t][j] = 0.f;
  const int a_row = 16 * g + (lane & 15);
  const int a_col = (lane >> 4) * 8;
  const int b_key = 32 * h + (lane & 7) + ((lane >> 4) << 3);
  const int b_col = ((lane >> 3) & 1) * 8;
#pragma unroll 4
  for (int kk = 0; kk < kD / 16; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, q_tile + tile_offset(a_row, kk * 16 + a_col));
#pragma unroll
    for (int np = 0; np < 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, k_tile + tile_offset(b_key + 16 * np, kk * 16 + b_col));
      mma_bf16_16816(s[2 * np], a, b[0], b[1]);
      mma_bf16_16816(s[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// O[16 g + i, 256 h + n] += P[16 g + i, :] V[:, 256 h + n] for this warp.
__device__ __forceinline__ void pv_mma(float (&o)[32][4], uint32_t p_tile, uint32_t v_tile, int g, int h) {
  const int lane = threadIdx.x & 31;
  const int a_row = 16 * g + (lane & 15);
  const int a_col = (lane >> 4) * 8;
  const int b_key = (lane & 7) + (((lane >> 3) & 1) << 3);
  const int b_col = 256 * h + ((lane >> 4) << 3);
#pragma unroll
  for (int kk = 0; kk < kBlock / 16; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, p_tile + tile_offset(a_row, kk * 16 + a_col));
#pragma unroll
    for (int np = 0; np < 16; ++np) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, v_tile + tile_offset(kk * 16 + b_key, b_col + 16 * np));
      mma_bf16_16816(o[2 * np], a, b[0], b[1]);
      mma_bf16_16816(o[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// ---------------------------------------------------------------- wgmma

// Shared-memory matrix descriptor, 128-byte swizzle. lbo/sbo in bytes.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32) | (1ull << 62);
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// D[64 x 32] (+)= A[64 x 16] * B[16 x 32]; A K-major, B K-major, both in shared memory.
__device__ __forceinline__ void wgmma_m64n32k16(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
      "}, %16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// The 128 accumulator registers of an m64n256 wgmma, as asm text and operands.
#define MLA_D128_REGS \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define MLA_D128_OPERANDS(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
  "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
  "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
  "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
  "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
  "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
  "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
  "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// D[64 x 256] (+)= A[64 x 16] * B[16 x 256]; A K-major, B MN-major, both in shared memory.
__device__ __forceinline__ void wgmma_m64n256k16_bmn(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" MLA_D128_REGS "}, %128, %129, p, 1, 1, 0, 1;\n}\n"
      : MLA_D128_OPERANDS(d)
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// Warpgroup h: S[0..63, 32 h .. 32 h + 31] over the 576 dims.
__device__ __forceinline__ void scores_wgmma(float (&s)[4][4], uint32_t q_tile, uint32_t k_tile, int h) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    const uint32_t k_off = (kk >> 2) * kPanelBytes + (kk & 3) * 32;
    const uint64_t da = smem_desc(q_tile + k_off, 16, 1024);
    const uint64_t db = smem_desc(k_tile + k_off + 32 * h * 128, 16, 1024);
    wgmma_m64n32k16(&s[0][0], da, db, kk > 0);
  }
  wgmma_commit();
  wgmma_wait_all();
}

// Warpgroup h: O[0..63, 256 h ..] += P[0..63, 0..63] V[0..63, 256 h ..].
// V is MN-major: 64-column panels 8 KiB apart (leading byte offset), groups
// of 8 keys 1 KiB apart (stride byte offset).
__device__ __forceinline__ void pv_wgmma(float (&o)[32][4], uint32_t p_tile, uint32_t v_tile, int h) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kBlock / 16; ++kk) {
    const uint64_t da = smem_desc(p_tile + kk * 32, 16, 1024);
#ifdef MLA_V_DESC_SWAPPED
    const uint64_t db = smem_desc(v_tile + 4 * h * kPanelBytes + kk * 16 * 128, 1024, kPanelBytes);
#else
    const uint64_t db = smem_desc(v_tile + 4 * h * kPanelBytes + kk * 16 * 128, kPanelBytes, 1024);
#endif
    wgmma_m64n256k16_bmn(&o[0][0], da, db, 1);
  }
  wgmma_commit();
  wgmma_wait_all();
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// The sum of a row's values over the four threads that hold it.
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Row frag_row + 8 i of one warpgroup's half of O (columns 256 h ..,
// S's accumulator layout: o[n][2 i .. 2 i + 1] are columns 8 n + 2 (lane
// % 4) and + 1) times inv: bf16 into out when the sequence lies in one
// part, else into its partial slot in fp32; half 0 writes the row's lse.
// Shared by the lockstep and seesaw epilogues.
__device__ __forceinline__ void store_row(const float (&o)[32][4], int i, float inv, float lse, bool whole, int b, int slot,
                                          int row, int h, int lane, const MlaDecodeParams& p) {
  const int R = p.s_q * p.h_q;
  if (whole) {
    __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(p.out) + (static_cast<size_t>(b) * R + row) * kDV + 256 * h;
#pragma unroll
    for (int n = 0; n < 32; ++n)
      *reinterpret_cast<uint32_t*>(out + 8 * n + 2 * (lane & 3)) = pack_bf16(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
    if (h == 0 && (lane & 3) == 0) {
      const int sq = row / p.h_q, head = row % p.h_q;
      reinterpret_cast<float*>(p.lse)[(static_cast<size_t>(b) * p.h_q + head) * p.s_q + sq] = lse;
    }
  } else {
    float* out = reinterpret_cast<float*>(p.partial_out) + (static_cast<size_t>(slot) * R + row) * kDV + 256 * h;
#pragma unroll
    for (int n = 0; n < 32; ++n)
      *reinterpret_cast<float2*>(out + 8 * n + 2 * (lane & 3)) = make_float2(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
    if (h == 0 && (lane & 3) == 0)
      reinterpret_cast<float*>(p.partial_lse)[static_cast<size_t>(slot) * R + row] = lse;
  }
}

// ---------------------------------------------------------------- schedule

struct Schedule {
  const int* ws;
  int batch;
  __device__ int per_part() const { return ws[0]; }
  __device__ const int* prefix() const { return ws + MLA_SCHED_HEADER; }
  __device__ const int* split_base() const { return ws + MLA_SCHED_HEADER + batch + 1; }
  __device__ const int* part_start() const { return ws + MLA_SCHED_HEADER + 2 * batch + 1; }
};

__device__ __forceinline__ int warp_inclusive_scan(int v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += n;
  }
  return v;
}

// The sequence at cost position x < prefix[B]: the largest b with
// prefix[b] <= x.
__device__ __forceinline__ int sequence_at(const int* prefix, int B, int x) {
  int lo = 0, hi = B - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (prefix[mid] <= x) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// A piece's epilogue for one warp's rows (frag_row and frag_row + 8) of
// warpgroup h's half of O, given each row's 1 / sum and lse: bf16 into out
// when the sequence lies in one part, else an fp32 partial.
__device__ __forceinline__ void finish_rows(const float (&o)[32][4], const float (&inv)[2], const float (&lse)[2],
                                            const Schedule& sched, int b, int part, int first, int nb, int per,
                                            int row0, int frag_row, int h, int lane, const MlaDecodeParams& p) {
  const int R = p.s_q * p.h_q;
  // A warp's 16 rows are all below R or all past it: R is a multiple of 16
  // (h_q is 16, 32, 64 or 128, and s_q at most 2).
  if (row0 + (frag_row & ~15) >= R) return;
  const int split_first = first / per;
  const int split_last = (first + nb - 1) / per;
  const bool whole = split_first == split_last;
  const int slot0 = whole ? 0 : sched.split_base()[b];
  const int slot = slot0 + part - split_first;
#pragma unroll
  for (int i = 0; i < 2; ++i) store_row(o, i, inv[i], lse[i], whole, b, slot, row0 + frag_row + 8 * i, h, lane, p);
}

}  // namespace

// One warp. Cost of sequence b = its KV blocks + kOverhead; part p owns the
// cost positions [p per, (p + 1) per); block k of sequence b sits at
// position prefix[b] + kOverhead + k, so every block has exactly one part
// and a sequence's parts are consecutive.
extern "C" __global__ void __launch_bounds__(32) mla_decode_schedule(MlaDecodeParams p) {
  int* ws = reinterpret_cast<int*>(p.sched);
  const int* lens = reinterpret_cast<const int*>(p.seq_lens);
  const int B = p.batch;
  const int P = p.num_parts;
  int* prefix = ws + MLA_SCHED_HEADER;
  int* split_base = prefix + B + 1;
  int* part_start = split_base + B;
  const int lane = threadIdx.x;

  int carry = 0;
  for (int base = 0; base < B; base += 32) {
    const int b = base + lane;
    const int c = b < B ? cdiv(lens[b], kBlock) + kOverhead : 0;
    const int incl = warp_inclusive_scan(c);
    if (b < B) prefix[b] = carry + incl - c;
    carry += __shfl_sync(0xffffffffu, incl, 31);
  }
  const int total = carry;
  int per = max(1, cdiv(total, P));
  if (lane == 0) prefix[B] = total;
  __syncwarp();
#if MLA_SCHED_UNSPLIT_SLACK > 0
  // A split costs a piece that no charge counts (the part that continues
  // the sequence) and a combine. Where some part size from per to
  // per + MLA_SCHED_UNSPLIT_SLACK - 1 lets every part begin at a sequence's
  // start (inside its charge), take the smallest: no sequence is split. 128 sequences of
  // 1,024 tokens over 66 parts: 36 units a part instead of 35, 32 blocks
  // and 2 pieces at most instead of 32 and 3, and 56 fewer combines.
  // Varied lengths rarely allow it, and keep the balanced size.
  for (int cand = per; cand < per + MLA_SCHED_UNSPLIT_SLACK; ++cand) {
    bool whole = true;
    for (int k = 1 + lane; whole && k * cand < total; k += 32) {
      const int x = k * cand;
      whole = x - prefix[sequence_at(prefix, B, x)] <= kOverhead;
    }
    if (__all_sync(0xffffffffu, whole)) {
      per = cand;
      break;
    }
  }
#endif

  carry = 0;
  for (int base = 0; base < B; base += 32) {
    const int b = base + lane;
    int slots = 0;
    if (b < B) {
      const int first = prefix[b] + kOverhead;
      const int last = first + cdiv(lens[b], kBlock) - 1;
      const int n = last / per - first / per + 1;
      slots = n > 1 ? n : 0;
    }
    const int incl = warp_inclusive_scan(slots);
    if (b < B) split_base[b] = carry + incl - slots;
    carry += __shfl_sync(0xffffffffu, incl, 31);
  }

  for (int part = lane; part < P; part += 32) {
    const int x = part * per;
    part_start[part] = x < total ? sequence_at(prefix, B, x) : B;
  }
  if (lane == 0) {
    ws[0] = per;
    ws[1] = carry;
  }
}

namespace {

template <bool kWgmma>
__device__ __forceinline__ void decode_part(const MlaDecodeParams& p) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const uint32_t q_tile = smem_addr(smem);
  // KV stage i is at q_tile + (1 + i) * kTileBytes.
  const uint32_t p_tile = q_tile + 3 * kTileBytes;
  float* red_max = reinterpret_cast<float*>(smem + 3 * kTileBytes + 8192);  // [2][64]
  float* red_sum = red_max + 2 * kRows;                                    // [2][64]

  const Schedule sched{reinterpret_cast<const int*>(p.sched), p.batch};
  const int part = blockIdx.x;
  const int row0 = blockIdx.y * kRows;
  const int R = p.s_q * p.h_q;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = warp & 3;
  const int h = warp >> 2;
  // Rows of this thread's fragments: 16 g + lane / 4 and 8 below it.
  const int frag_row = 16 * g + (lane >> 2);
  const bool warp_active = kWgmma || row0 + 16 * g < R;  // mma.sync skips padding rows

  const int per = sched.per_part();
  const int lo = part * per;
  const int hi = lo + per - 1;
  const int* lens = reinterpret_cast<const int*>(p.seq_lens);
  const int* table = reinterpret_cast<const int*>(p.block_table);
  const __nv_bfloat16* cache = reinterpret_cast<const __nv_bfloat16*>(p.cache);
  const __nv_bfloat16* q = reinterpret_cast<const __nv_bfloat16*>(p.q);

  for (int b = sched.part_start()[part]; b < p.batch; ++b) {
    const int first = sched.prefix()[b] + kOverhead;  // position of block 0
    if (first > hi) break;
    const int len = lens[b];
    const int nb = cdiv(len, kBlock);
    const int k0 = max(0, lo - first);
    const int k1 = min(nb - 1, hi - first);
    if (k0 > k1) continue;
    const int* bt = table + static_cast<size_t>(b) * p.max_pages;

    load_tile_async(q_tile, q + (static_cast<size_t>(b) * R + row0) * kD, min(kRows, R - row0));
    load_tile_async(q_tile + kTileBytes, cache + static_cast<size_t>(bt[k0]) * kBlock * kD, min(kBlock, len - k0 * kBlock));
    cp_async_commit();

    float o[32][4];
#pragma unroll
    for (int i = 0; i < 32; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) o[i][j] = 0.f;
    float m_run[2] = {-INFINITY, -INFINITY};
    float l_run[2] = {0.f, 0.f};
    // Key limits of this thread's two rows: query i of s_q sees keys
    // [0, len - s_q + i]. Padding rows get the last key.
    int limit[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = row0 + frag_row + 8 * i;
      limit[i] = r < R ? len - p.s_q + r / p.h_q : len - 1;
    }

    for (int k = k0; k <= k1; ++k) {
      const int stage = (k - k0) & 1;
      const uint32_t kv_tile = q_tile + (1 + stage) * kTileBytes;
      cp_async_wait<0>();  // block k (and Q): the only copies in flight
      if (kWgmma) fence_proxy_async();
      // Block k is visible to all, and every thread is done with block k - 1
      // (its PV waited), so the other stage and the P tile are free.
      __syncthreads();
      if (k < k1) {
        load_tile_async(q_tile + (2 - stage) * kTileBytes, cache + static_cast<size_t>(bt[k + 1]) * kBlock * kD,
                        min(kBlock, len - (k + 1) * kBlock));
        cp_async_commit();
      }

      float s[4][4] = {};
      if constexpr (kWgmma) {
        scores_wgmma(s, q_tile, kv_tile, h);
      } else if (warp_active) {
        scores_mma(s, q_tile, kv_tile, g, h);
      }

      // Mask, then this half's row maxima.
      float mx[2] = {-INFINITY, -INFINITY};
      const int key0 = k * kBlock + 32 * h + 2 * (lane & 3);
#pragma unroll
      for (int t = 0; t < 4; ++t)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int key = key0 + 8 * t + (j & 1);
          if (key > limit[j >> 1]) s[t][j] = -INFINITY;
          mx[j >> 1] = fmaxf(mx[j >> 1], s[t][j]);
        }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
        mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
        if ((lane & 3) == 0) red_max[h * kRows + frag_row + 8 * i] = mx[i];
      }
      __syncthreads();

      // Online softmax: both halves see the same row maximum.
      // Once the running maxima settle, alpha is exactly 1 for most blocks:
      // the warp skips the 128 multiplies of O when none of its rows moved
      // (wgmma only: in the mma.sync variant, at 255 registers, the branch
      // costs a spill).
      float sub[2], alpha[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = frag_row + 8 * i;
        const float m_new = fmaxf(m_run[i], fmaxf(red_max[r], red_max[kRows + r]));
        sub[i] = m_new == -INFINITY ? 0.f : m_new * p.scale_log2;
        alpha[i] = fast_exp2(fmaf(m_run[i], p.scale_log2, -sub[i]));
        m_run[i] = m_new;
        l_run[i] *= alpha[i];
      }
      if (!kWgmma || __any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          o[n][0] *= alpha[0];
          o[n][1] *= alpha[0];
          o[n][2] *= alpha[1];
          o[n][3] *= alpha[1];
        }
      }
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        float pr[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          pr[j] = fast_exp2(fmaf(s[t][j], p.scale_log2, -sub[j >> 1]));
          l_run[j >> 1] += pr[j];
        }
        const int col = 32 * h + 8 * t + 2 * (lane & 3);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const __nv_bfloat162 v = __floats2bfloat162_rn(pr[2 * i], pr[2 * i + 1]);
          const int r = frag_row + 8 * i;
          const uint32_t addr = p_tile + tile_offset(r, col & ~7) + (col & 7) * 2;
          asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(*reinterpret_cast<const uint32_t*>(&v))
                       : "memory");
        }
      }
      if (kWgmma) fence_proxy_async();
      __syncthreads();

      if constexpr (kWgmma) {
        pv_wgmma(o, p_tile, kv_tile, h);
      } else if (warp_active) {
        pv_mma(o, p_tile, kv_tile, g, h);
      }
    }

    // Epilogue: total denominator of both key halves.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      l_run[i] = quad_sum(l_run[i]);
      if ((lane & 3) == 0) red_sum[h * kRows + frag_row + 8 * i] = l_run[i];
    }
    __syncthreads();
    float inv[2], lse[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = frag_row + 8 * i;
      const float l = red_sum[r] + red_sum[kRows + r];
      inv[i] = l > 0.f ? 1.f / l : 0.f;
      lse[i] = l > 0.f ? m_run[i] * p.scale + logf(l) : -INFINITY;
    }
    finish_rows(o, inv, lse, sched, b, part, first, nb, per, row0, frag_row, h, lane, p);
    // The next sequence's Q and first block overwrite q_tile and stage 0;
    // the barrier above came after every thread's last QK^T and PV, and
    // red_sum is next written after several barriers.
  }
}


// ---------------------------------------------------------------- seesaw
//
// mla_decode_seesaw (v10-v13): the two warpgroups take turns on pairs of KV
// blocks, so one warpgroup's softmax overlaps the other's tensor-core work
// (the schedule FlashMLA calls "seesaw"; written here from its description
// and docs/kernel-notes.md, v9 and v10).
//
// A sequence's blocks go in pairs: block 2i in KV stage 0, block 2i + 1 in
// stage 1. Warpgroup 0 computes S0 = Q K_{2i}^T over all 64 keys, warpgroup 1
// S1 = Q K_{2i+1}^T, at the same time. Then, per pair:
//   wg0: softmax of S0 (running max m -> m0)         -> scale0 ready
//        P0 (in m0's units) to shared memory          -> P0 ready
//        O_L rescaled to m0; O_L += P0 V0_L (P0 from registers)
//   wg1: O_R rescaled to m0; O_R += P0 V0_R (shared), under
//        its softmax of S1 (m0 -> m1)                 -> scale1 ready
//        P1 to shared memory                          -> P1 ready
//        O_R rescaled to m1; O_R += P1 V1_R (registers)
//   wg0: O_L rescaled to m1; O_L += P1 V1_L (shared)
//   both: QK^T of the next pair, as soon as their panels land.
// The only chain between the warpgroups is the two softmaxes; the tensor
// pipe has the other warpgroup's products to run meanwhile.
//
// Copies: each warpgroup refills the panels it alone reads, right after
// its last product on them, so no warpgroup waits for the other to free a
// stage. Warpgroup w owns V panels 4w .. 4w + 3 of both stages; the RoPE
// panel 8 of stage s goes to warpgroup 1 - s, because that panel holds
// P_s (written over the RoPE values once the owner's QK^T is done), which
// only warpgroup 1 - s reads. Each share is 4-5 bulk tensor copies issued
// by as many lanes of one warp on the share's own mbarrier (expect_tx), so
// QK^T starts on the share that landed first. A sequence's last pair refills with the next
// sequence's first two blocks and loads the next Q, so the copies run on
// across sequences.
//
// A piece ends without a CTA barrier: the last pair hands each warpgroup's
// row sums to the other (wg1's with its scale, wg0's with P0), so each
// warpgroup normalizes and stores its half of O and goes on to the next
// piece while the other still works.

template <bool B>
struct Flag {
  static constexpr bool value = B;
};
template <int N>
struct Int {
  static constexpr int value = N;
};

// Named barriers between the warpgroups (id 0 is __syncthreads); each use
// is 128 arrivals from the producer warpgroup and 128 from the consumer.
// wg1's scale reaches wg0 through an mbarrier instead (scale1_bar):
// compute-sanitizer's racecheck reported that hand-off through a named
// barrier as a race, though it accepts the same pattern for wg0's scale.
enum PairBarrier : int { kScale0Ready = 1, kP0Ready = 2, kP1Ready = 3 };
__device__ __forceinline__ void bar_arrive(int id) { asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void bar_sync(int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
// Warpgroup w alone (its 128 threads) on barrier 4 + w.
__device__ __forceinline__ void warpgroup_sync(int w) { asm volatile("bar.sync %0, 128;\n" ::"r"(4 + w) : "memory"); }

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, int parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
// The mbarrier counts one arrival once all of this thread's earlier
// cp.async copies have landed; the thread does not wait.
__device__ __forceinline__ void cp_async_arrive_noinc(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// D[64 x 64] (+)= A[64 x 16] * B[16 x 64]; A K-major, B K-major, both in shared memory.
__device__ __forceinline__ void wgmma_m64n64k16(float* d, uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64 x 256] += A[64 x 16] * B[16 x 256]; A in registers (the accumulator
// layout of S, packed to bf16 pairs), B MN-major in shared memory.
__device__ __forceinline__ void wgmma_m64n256k16_rs(float* d, const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" MLA_D128_REGS "}, {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n"
      "}\n"
      : MLA_D128_OPERANDS(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

// The part's sequences, one piece (a sequence's blocks k .. k1 in this
// part) at a time; b == batch once the part is exhausted.
struct PartCursor {
  int b, k, k1, len;
  __device__ __forceinline__ int blocks() const { return k1 - k + 1; }
};

struct PartView {
  const int* prefix;
  const int* lens;
  int batch, lo, hi;

  // The first sequence from b on with blocks in [lo, hi].
  __device__ __forceinline__ void seek(PartCursor& c, int b) const {
    for (; b < batch; ++b) {
      const int first = prefix[b] + kOverhead;
      if (first > hi) break;
      const int len = lens[b];
      const int k0 = max(0, lo - first);
      const int k1 = min(cdiv(len, kBlock) - 1, hi - first);
      if (k0 <= k1) {
        c = PartCursor{b, k0, k1, len};
        return;
      }
    }
    c.b = batch;
  }
};

// The page of block j of piece c.
__device__ __forceinline__ int block_page(const PartCursor& c, int j, const MlaDecodeParams& p) {
  return reinterpret_cast<const int*>(p.block_table)[static_cast<size_t>(c.b) * p.max_pages + c.k + j];
}

// Warpgroup w's share of a block into stage s, by bulk tensor copies
// (p.kv_map: a CUtensorMap over the whole cache as [rows][576] bf16, boxes
// of 64 x 64 with the 128-byte swizzle, so each box lands as one panel in
// the tile layout): V panels 4w .. 4w + 3, and the RoPE panel when s != w.
// Lanes 0-4 of the warpgroup's first warp issue the boxes (copy_share) and
// the share's barrier counts their bytes, so no other thread spends issue
// slots on copies, and TMA writes through the async proxy as wgmma reads
// (no proxy fence). Rows past the sequence's
// end hold whatever the page holds: zero_tail clears them before P V.
__device__ __forceinline__ void tma_box(uint32_t dst, uint64_t map, int col, int row, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(map), "r"(col), "r"(row), "r"(bar)
      : "memory");
}

// Asks L2 for bytes (a multiple of 16) at src, 16-byte aligned; nothing
// comes back to the CTA.
__device__ __forceinline__ void prefetch_l2(const void* src, int bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
}
// Asks L2 for the line holding p.
__device__ __forceinline__ void prefetch_line_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p) : "memory");
}

__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

// The panels of share w of a stage s: V panels 4w .. 4w + 3, and the RoPE
// panel (8) when s != w (see copy_share).
__device__ __forceinline__ int share_panels(int s, int w) { return s != w ? 5 : 4; }
__device__ __forceinline__ int share_panel(int w, int i) { return i < 4 ? 4 * w + i : 8; }

// Called by warpgroup w right after its last read of share (s, w) of a
// stage; full_bar, the share's barrier, counts the bytes.
__device__ __forceinline__ void copy_share(uint32_t stage, int s, int w, int page, const MlaDecodeParams& p, int t,
                                           uint32_t full_bar) {
  // One warp instruction issues the share: lane i its i-th box. A box
  // may land before lane 0's expect: the barrier's pending arrival
  // keeps the phase open, and its byte count may go below zero.
  const int panels = share_panels(s, w);
  if (t == 0) mbar_expect_tx(full_bar, panels * kPanelBytes);
  if (t < panels) {
    const int panel = share_panel(w, t);
    tma_box(stage + panel * kPanelBytes, p.kv_map, 64 * panel, p.kv_row0 + page * kBlock, full_bar);
  }
}

// Zeroes rows [valid_rows, 64) of warpgroup w's V panels of a stage (the
// last block of a sequence), so that P = 0 there never meets a NaN.
__device__ __forceinline__ void zero_tail(uint32_t stage, int w, int valid_rows, int t) {
  if (valid_rows >= kBlock) return;
#pragma unroll 4
  for (int i = t; i < 4 * kBlock * 8; i += 128) {
    const int panel = 4 * w + (i >> 9), row = (i >> 3) & 63, chunk = i & 7;
    if (row >= valid_rows)
      asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};\n" ::"r"(stage + panel * kPanelBytes + row * 128 + chunk * 16),
                   "r"(0)
                   : "memory");
  }
  fence_proxy_async();
}

// The bulk epilogue. Storing O from the accumulator
// layout straight to global memory took ~12,000 cycles a piece at s_k =
// 1024 (all CTAs end their pieces together; 16-byte stores took as long),
// ~15% of the call. Instead each warpgroup writes its half of O, in bf16,
// to shared memory it has finished reading, and the bulk copy engine
// writes each row's 512 bytes out (one cp.async.bulk per row: a query
// tile's rows are consecutive in out, but a warpgroup's half of each is
// not, and each warp sends its own rows as soon as they are written).
// Rows are 528 bytes apart in shared memory, so the 8 rows of a store
// instruction start 16 bytes apart in the banks: conflict-free 4-byte
// stores. Rows 0-61 of warpgroup 0 go to V1_L (stage 1, panels 0-3), of
// warpgroup 1 to V0_R (stage 0, panels 4-7): the last V panels each
// warpgroup reads in a piece, its own, whose refills for the next piece
// wait until the copies have read them. Rows 62 and 63 go to a spare area
// of 2 KiB per warpgroup beside the row statistics (not to a RoPE panel,
// which the other warpgroup writes P into: compute-sanitizer's racecheck
// cannot see the order that the refill's barrier gives such writes).
constexpr int kBulkRowStride = 528;
constexpr int kBulkSpareOffset = 2048;  // from the end of the three tiles; 4 KiB
static_assert(kBulkRowStride % 16 == 0 && kBulkRowStride / 16 % 8 == 1, "rows 16 bytes apart in the banks");
static_assert(62 * kBulkRowStride <= 4 * kPanelBytes, "rows 0-61 fit in four panels");
static_assert(kBulkSpareOffset + 2048 + 96 + 2 * kBulkRowStride <= MLA_SMEM_BYTES - 1024 - 3 * kTileBytes, "spare fits");
// MLA_EPI_STAGE1 puts warpgroup 1's rows in V1_R (stage 1, panels 4-7)
// instead, so that only stage 1 waits for the copies and stage 0's refill
// for the next piece goes out in the last pair as in every other.
// spare: the spare area's start, 128-byte aligned.
__device__ __forceinline__ uint32_t bulk_row_addr(uint32_t stage0, uint32_t stage1, uint32_t spare, int w, int row) {
  // Rows 62 and 63 keep the bank offset (row * 528) % 128 = 16 (row % 8).
  if (row >= 62) return spare + 2048 * w + 96 + (row - 62) * kBulkRowStride;
#if MLA_EPI_STAGE1
  return stage1 + 4 * w * kPanelBytes + row * kBulkRowStride;
#else
  return (w == 0 ? stage1 : stage0 + 4 * kPanelBytes) + row * kBulkRowStride;
#endif
}
__device__ __forceinline__ void bulk_store(void* dst, uint32_t src, int bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }

// Warpgroup h's half of O for an unsplit piece: one warp's rows
// (frag_row, frag_row + 8) times inv into shared memory, then the warp's
// 16 rows out by bulk copies, and the lse by warpgroup 0. Returns once the
// copies have read shared memory; the caller's warpgroup barrier then
// frees the panels for refills. Every thread of the warpgroup calls it.
__device__ __forceinline__ void bulk_epilogue(const float (&o)[32][4], const float (&inv)[2], const float (&lse)[2],
                                              uint32_t stage0, uint32_t stage1, uint32_t spare, int b, int row0,
                                              int frag_row, int h, int lane, const MlaDecodeParams& p) {
  const int R = p.s_q * p.h_q;
  // Other warps of the warpgroup zeroed rows of these panels (zero_tail)
  // before the last P V; the product's wait orders that only per warp.
  warpgroup_sync(h);
  if (row0 + (frag_row & ~15) >= R) return;  // a warp's 16 rows: all in the tile or all past R
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const uint32_t dst = bulk_row_addr(stage0, stage1, spare, h, frag_row + 8 * i) + 4 * (lane & 3);
#pragma unroll
    for (int n = 0; n < 32; ++n)
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(dst + 16 * n), "r"(pack_bf16(o[n][2 * i] * inv[i], o[n][2 * i + 1] * inv[i]))
                   : "memory");
    if (h == 0 && (lane & 3) == 0) {
      const int row = row0 + frag_row + 8 * i, sq = row / p.h_q, head = row % p.h_q;
      reinterpret_cast<float*>(p.lse)[(static_cast<size_t>(b) * p.h_q + head) * p.s_q + sq] = lse[i];
    }
  }
  fence_proxy_async();  // the rows, for the copies (async proxy)
  __syncwarp();
  if (lane < 16) {
    const int row = (frag_row & ~15) + lane;
    __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(p.out) + (static_cast<size_t>(b) * R + row0 + row) * kDV + 256 * h;
    bulk_store(out, bulk_row_addr(stage0, stage1, spare, h, row), 256 * 2);
    bulk_commit();
    bulk_wait_read();
  }
  __syncwarp();
}

// Warpgroup 1 loads the Q tile (t = 0..127); rows past the tile's end are
// zero. The Q barrier counts its threads' copies.
__device__ __forceinline__ void load_q(uint32_t q_tile, const __nv_bfloat16* src, int valid_rows, int t,
                                       uint32_t q_bar) {
  load_tile_async<128, 4>(q_tile, src, valid_rows, t);
  cp_async_arrive_noinc(q_bar);
}

// S (+)= Q K^T over one 64-column panel; kFirst starts from zero.
template <int kPanel, bool kFirst = false>
__device__ __forceinline__ void qk_panel(float (&sc)[32], uint32_t q_tile, uint32_t stage) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const uint32_t off = kPanel * kPanelBytes + kk * 32;
    wgmma_m64n64k16(sc, smem_desc(q_tile + off, 16, 1024), smem_desc(stage + off, 16, 1024), kFirst && kk == 0 ? 0 : 1);
  }
}

// S (+)= Q K^T over the panels of share w of stage s (see copy_share):
// 4w .. 4w + 3, and the RoPE panel when s != w. The caller waited for the
// share.
template <int kStage, int kShare, bool kFirst>
__device__ __forceinline__ void qk_share(float (&sc)[32], uint32_t q_tile, uint32_t stage) {
  qk_panel<4 * kShare, kFirst>(sc, q_tile, stage);
  qk_panel<4 * kShare + 1>(sc, q_tile, stage);
  qk_panel<4 * kShare + 2>(sc, q_tile, stage);
  qk_panel<4 * kShare + 3>(sc, q_tile, stage);
  if constexpr (kStage != kShare) qk_panel<8>(sc, q_tile, stage);
}

// Warpgroup w: O[0..63, 256 w ..] += P V with P in the stage's RoPE panel.
__device__ __forceinline__ void pv_shared(float (&o)[32][4], uint32_t stage, int w) {
  const uint32_t p_tile = stage + 8 * kPanelBytes;
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kBlock / 16; ++kk) {
    const uint64_t da = smem_desc(p_tile + kk * 32, 16, 1024);
    const uint64_t db = smem_desc(stage + 4 * w * kPanelBytes + kk * 16 * 128, kPanelBytes, 1024);
    wgmma_m64n256k16_bmn(&o[0][0], da, db, 1);
  }
  wgmma_commit();
}

// Warpgroup w: O[0..63, 256 w ..] += P V with P in registers: pb[kk] is
// the A fragment of keys 16 kk .. 16 kk + 15 (S's accumulator layout).
__device__ __forceinline__ void pv_registers(float (&o)[32][4], const uint32_t (&pb)[4][4], uint32_t stage, int w) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kBlock / 16; ++kk)
    wgmma_m64n256k16_rs(&o[0][0], pb[kk], smem_desc(stage + 4 * w * kPanelBytes + kk * 16 * 128, kPanelBytes, 1024));
  wgmma_commit();
}

// P (this thread's fragment of S, times scale per row) as bf16 into the
// stage's RoPE panel, K-major and swizzled like every tile.
__device__ __forceinline__ void store_p(const float (&sc)[32], const float (&scale)[2], uint32_t stage, int frag_row,
                                        int lane) {
  const uint32_t p_tile = stage + 8 * kPanelBytes;
#pragma unroll
  for (int n = 0; n < 8; ++n) {
    const int col = 8 * n + 2 * (lane & 3);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint32_t addr = p_tile + tile_offset(frag_row + 8 * i, col & ~7) + (col & 7) * 2;
      const uint32_t v = pack_bf16(sc[4 * n + 2 * i] * scale[i], sc[4 * n + 2 * i + 1] * scale[i]);
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
    }
  }
}

// O *= alpha per row; skipped when no row of the warp moved (alpha exactly
// 1 for most blocks once the maxima settle).
__device__ __forceinline__ void rescale(float (&o)[32][4], const float (&alpha)[2]) {
  if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
    for (int n = 0; n < 32; ++n) {
      o[n][0] *= alpha[0];
      o[n][1] *= alpha[0];
      o[n][2] *= alpha[1];
      o[n][3] *= alpha[1];
    }
  }
}

// The online softmax of one block's S (keys key0 + 8 n + ...): masks keys
// past each row's limit (all of them when !present), takes the running
// maximum (log2 units, i.e. times scale_log2) from m_old (-inf at a
// sequence's first block) and leaves exp2(S scale_log2 - m_new) in sc.
// Returns alpha = exp2(m_old - m_new) and the new maxima; scales l by alpha
// and adds this thread's part of the row sums. The scale is positive, so
// the maximum is taken on the raw scores.
__device__ __forceinline__ void softmax_block(float (&sc)[32], bool present, int key0, const int (&limit)[2],
                                              float scale_log2, const float (&m_old)[2], float (&m_new)[2],
                                              float (&alpha)[2], float (&l)[2]) {
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + 8 * n + (e & 1);
      if (!present || key > limit[e >> 1]) sc[4 * n + e] = -INFINITY;
      mx[e >> 1] = fmaxf(mx[e >> 1], sc[4 * n + e]);
    }
  float sub[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
    m_new[i] = fmaxf(m_old[i], mx[i] * scale_log2);
    sub[i] = m_new[i] == -INFINITY ? 0.f : m_new[i];
    alpha[i] = fast_exp2(m_old[i] - sub[i]);
    l[i] *= alpha[i];
  }
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float pr = fast_exp2(fmaf(sc[4 * n + e], scale_log2, -sub[e >> 1]));
      sc[4 * n + e] = pr;
      l[e >> 1] += pr;
    }
}

// wgmma reads its register operand asynchronously: this keeps the
// compiler from reusing those registers before the product is waited for.
__device__ __forceinline__ void keep_alive(uint32_t (&pb)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(pb[kk][i])::"memory");
}

__device__ __forceinline__ void pack_p(const float (&sc)[32], uint32_t (&pb)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) pb[kk][i] = pack_bf16(sc[8 * kk + 2 * i], sc[8 * kk + 2 * i + 1]);
}

#ifdef MLA_TRACE
// Cycles per phase of the seesaw loop, summed over CTAs (thread 0 of each
// warpgroup; hack/gpu/mla_bench.cu's `one` mode prints them per pair when
// built with -DMLA_TRACE). Phases: 0 waiting for the other warpgroup,
// 1 softmax and P, 2 P V, 3 refills, 4 waiting for data, 5 QK^T, per
// piece 10 waiting for Q, 6 the first QK^Ts, 11 the epilogue; 7 counts
// pairs, 8 pieces, 9 is the total.
__device__ unsigned long long g_mla_trace[2][12];
#define TRACE_START() long long trace_t_ = clock64()
#define TRACE_RESET() trace_t_ = clock64()
#define PHASE(i)                                                                                   \
  do {                                                                                             \
    const long long now_ = clock64();                                                              \
    if (t == 0) atomicAdd(&g_mla_trace[w][i], static_cast<unsigned long long>(now_ - trace_t_));   \
    trace_t_ = now_;                                                                               \
  } while (0)
#else
#define TRACE_START()
#define TRACE_RESET()
#define PHASE(i)
#endif

__device__ __forceinline__ void decode_part_seesaw(const MlaDecodeParams& p) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const uint32_t q_tile = smem_addr(smem);
  const uint32_t stage0 = q_tile + kTileBytes, stage1 = q_tile + 2 * kTileBytes;
  float* s_max = reinterpret_cast<float*>(smem + 3 * kTileBytes);  // running row maxima (log2 units)
  float* s_scale0 = s_max + kRows;                                  // alpha of wg0's latest softmax
  float* s_scale1 = s_scale0 + kRows;                               // alpha of wg1's latest softmax
  // [piece parity][warpgroup][64 rows]: each warpgroup's final row sums,
  // handed over in the piece's last pair. The barriers of the pairs already
  // order a slot's read before its next write; the parity keeps that true
  // without relying on them.
  float* s_sum = s_scale1 + kRows;
  const uint32_t bars = smem_addr(s_sum + 4 * kRows);
  // full[s][w]: warpgroup w's share of stage s landed; q_bar: the Q tile;
  // scale1_bar: wg1's softmax of a pair wrote the maxima and its scale.
  auto full_bar = [&](int s, int w) { return bars + 16 * s + 8 * w; };
  const uint32_t q_bar = bars + 32;
  const uint32_t scale1_bar = bars + 40;
  // Waits until share (s, w) of stage s landed.
  auto wait_share = [&](int s, int w, int parity) { mbar_wait(full_bar(s, w), parity); };

  const Schedule sched{reinterpret_cast<const int*>(p.sched), p.batch};
  const int per = sched.per_part();
  // The query tiles of one part are consecutive CTAs, so they start
  // together on neighbouring SMs and the second one's reads of each block
  // hit in L2 (FlashMLA orders its grid the same way).
  const int cta = blockIdx.x + gridDim.x * blockIdx.y;
  const int part = cta / gridDim.y;
  const PartView view{sched.prefix(), reinterpret_cast<const int*>(p.seq_lens), p.batch, part * per, part * per + per - 1};
  const int row0 = cta % gridDim.y * kRows;
  const int R = p.s_q * p.h_q;
  const int w = threadIdx.x >> 7;  // warpgroup
  const int t = threadIdx.x & 127;
  const int lane = threadIdx.x & 31;
  const int frag_row = 16 * ((threadIdx.x >> 5) & 3) + (lane >> 2);  // and frag_row + 8
  const __nv_bfloat16* q = reinterpret_cast<const __nv_bfloat16*>(p.q);
#ifdef MLA_TRACE
  const long long t_begin = clock64();
#endif

  // The part's first sequence (nearly always the first piece's: see
  // PartView::seek), read before the barriers are set up.
  const int start_b = sched.part_start()[part];
  if (threadIdx.x == 0) {
    for (int s = 0; s < 2; ++s)
      for (int v = 0; v < 2; ++v) mbar_init(full_bar(s, v), 1);
    mbar_init(q_bar, 128);
    mbar_init(scale1_bar, 128);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
#if MLA_PREFETCH_START
  // The start is a chain of dependent reads (part start, then the
  // sequence's prefix and length, then its pages, then the data). Asking
  // L2 for the likely Q tile and block-table row as soon as the part's
  // first sequence is known takes DRAM out of the last two links (a wrong
  // guess only costs the prefetch).
  if (threadIdx.x == 128 && start_b < p.batch) {
    prefetch_l2(q + (static_cast<size_t>(start_b) * R + row0) * kD, min(kRows, R - row0) * kD * 2);
    prefetch_line_l2(reinterpret_cast<const int*>(p.block_table) + static_cast<size_t>(start_b) * p.max_pages);
  }
#endif
  __syncthreads();
  // Warpgroup w's share of stage s, right after its last read of it.
  auto copy = [&](uint32_t stage, int s, int page) { copy_share(stage, s, w, page, p, t, full_bar(s, w)); };

  PartCursor cur;
  view.seek(cur, start_b);
  if (cur.b >= p.batch) return;
  // The first piece's Q and first two blocks; later pieces get theirs
  // from the previous piece's last pair.
  // MLA_Q_FIRST: Q's address needs no block-table read, so its copies
  // can go out while the pages are read and DRAM starts on every CTA's Q
  // a read earlier. MLA_STAGE1_AFTER_Q: block 1 (wg1's first S, needed
  // only after wg0's first softmax) is asked for once Q has landed, so
  // that Q and block 0 have the start's bandwidth to themselves.
  int first_page1 = cur.blocks() > 1 ? block_page(cur, 1, p) : -1;
  {
    const int page0 = block_page(cur, 0, p);
    if (MLA_Q_FIRST && w == 1)
      load_q(q_tile, q + (static_cast<size_t>(cur.b) * R + row0) * kD, min(kRows, R - row0), t, q_bar);
    copy(stage0, 0, page0);
    if (!MLA_STAGE1_AFTER_Q && first_page1 >= 0) copy(stage1, 1, first_page1);
    if (!MLA_Q_FIRST && w == 1)
      load_q(q_tile, q + (static_cast<size_t>(cur.b) * R + row0) * kD, min(kRows, R - row0), t, q_bar);
  }

  // Parity of the next block each stage delivers, and of the next Q.
  int phase[2] = {0, 0};
  int q_phase = 0, scale1_phase = 0;
  int piece = 0;  // pieces done, for s_sum's slot
  while (cur.b < p.batch) {
    TRACE_START();
    const int b = cur.b, len = cur.len, k0 = cur.k, n = cur.blocks();
    const int sum_slot = (piece & 1) * 2 * kRows;
    PartCursor nxt;
    view.seek(nxt, b + 1);
    // Whether the sequence lies in this part alone (else this piece leaves
    // a partial), and whether its O then leaves by bulk copies, which
    // defers each warpgroup's last refill of the piece to the epilogue.
    const int first = sched.prefix()[b] + kOverhead, nb = cdiv(len, kBlock);
    const bool whole = first / per == (first + nb - 1) / per;
    const bool bulk_out = whole;
    int limit[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = row0 + frag_row + 8 * i;
      limit[i] = r < R ? len - p.s_q + r / p.h_q : len - 1;
    }

    mbar_wait(q_bar, q_phase);
    q_phase ^= 1;
    fence_proxy_async();
    if (MLA_STAGE1_AFTER_Q && first_page1 >= 0) {
      copy(stage1, 1, first_page1);  // the first piece's block 1
      first_page1 = -1;
    }
    PHASE(10);
    // Each warpgroup's first S: wg0 block 0, wg1 block 1.
    float sc[32];
    if (w == 0) {
      wait_share(0, 0, phase[0]);
      wgmma_fence();
      qk_share<0, 0, true>(sc, q_tile, stage0);
      wgmma_commit();
      wait_share(0, 1, phase[0]);
      wgmma_fence();
      qk_share<0, 1, false>(sc, q_tile, stage0);
      wgmma_commit();
    } else {
      // A one-block piece has no block 1: the product then runs on the Q
      // tile (never on a stage the next piece's copies may be filling)
      // and its softmax discards it, since a wgmma under a runtime branch
      // would serialize them all.
      // As wg0, it starts on the share refilled first (its own).
      const uint32_t kv = n > 1 ? stage1 : q_tile;
      if (n > 1) wait_share(1, 1, phase[1]);
      wgmma_fence();
      qk_share<1, 1, true>(sc, q_tile, kv);
      wgmma_commit();
      if (n > 1) wait_share(1, 0, phase[1]);
      wgmma_fence();
      qk_share<1, 0, false>(sc, q_tile, kv);
      wgmma_commit();
    }
    wgmma_wait<0>();
    PHASE(6);

    float o[32][4];
#pragma unroll
    for (int i = 0; i < 32; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[i][e] = 0.f;
    float l[2] = {0.f, 0.f};
    // Set in the piece's last pair: the final row maxima and the row sums
    // of both warpgroups, in the same units.
    float m_fin[2] = {-INFINITY, -INFINITY}, l_tot[2] = {0.f, 0.f};

    // One pair of blocks, i0 and i0 + 1. The flags are compile-time so that
    // no wgmma sits under a runtime branch (ptxas then serializes every
    // wgmma of the kernel, C7520): kQk0 / kQk1 whether blocks i0 + 2 /
    // i0 + 3 exist (each warpgroup's next QK^T), kHas1 whether i0 + 1 does.
    // !kQk0 is the piece's last pair.
    int i0 = 0;
    auto pair = [&](auto qk0_flag, auto qk1_flag, auto has1_flag) {
      constexpr bool kQk0 = decltype(qk0_flag)::value;
      constexpr bool kQk1 = decltype(qk1_flag)::value;
      constexpr bool kHas1 = decltype(has1_flag)::value;
      // The blocks the stages take next: this piece's next pair, or in
      // its last pair the next piece's first two blocks.
      const PartCursor& next = kQk0 ? cur : nxt;
      const int j0 = kQk0 ? i0 + 2 : 0;
      const bool fill0 = kQk0 || nxt.b < p.batch;
      const bool fill1 = kQk0 ? kQk1 : nxt.b < p.batch && nxt.blocks() > 1;
      // Their pages, read here so the block-table loads are off the copies' path.
      const int page0 = fill0 ? block_page(next, j0, p) : 0;
      const int page1 = fill1 ? block_page(next, j0 + 1, p) : 0;
      const int key0 = (k0 + i0) * kBlock + 2 * (lane & 3);
      const int valid0 = len - (k0 + i0) * kBlock, valid1 = valid0 - kBlock;  // rows of blocks i0, i0 + 1 (>= 64: all)
      uint32_t pb[4][4];
      float m_old[2], m_new[2], alpha[2];
      TRACE_START();
      // The next pair's QK^T over share kShare of stage kStage, once it
      // landed.
      auto issue_qk = [&](auto stage_c, auto share_c, auto first_c, uint32_t stage, int parity) {
        constexpr int kStage = decltype(stage_c)::value, kShare = decltype(share_c)::value;
        wait_share(kStage, kShare, parity);
        PHASE(4);
        wgmma_fence();
        qk_share<kStage, kShare, decltype(first_c)::value>(sc, q_tile, stage);
        wgmma_commit();
      };
      if (w == 0) {
#pragma unroll
        for (int i = 0; i < 2; ++i) m_old[i] = i0 == 0 ? -INFINITY : s_max[frag_row + 8 * i];
        softmax_block(sc, true, key0, limit, p.scale_log2, m_old, m_new, alpha, l);
        __syncwarp();
        if ((lane & 3) == 0)
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            s_max[frag_row + 8 * i] = m_new[i];
            s_scale0[frag_row + 8 * i] = alpha[i];
          }
        bar_arrive(kScale0Ready);
        // P0 in m0's units, for wg1 to apply to V0_R while it runs its
        // softmax, so that stage 0's second share is free mid-pair; in
        // the piece's last pair also this warpgroup's row sums, in m0's
        // units (wg1 takes them to m1's).
        const float one[2] = {1.f, 1.f};
        store_p(sc, one, stage0, frag_row, lane);
        if constexpr (!kQk0) {
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const float sum = quad_sum(l[i]);
            if ((lane & 3) == 0) s_sum[sum_slot + frag_row + 8 * i] = sum;
          }
        }
        fence_proxy_async();
        bar_arrive(kP0Ready);
        rescale(o, alpha);
        pack_p(sc, pb);
        PHASE(1);
        zero_tail(stage0, 0, valid0, t);
        pv_registers(o, pb, stage0, 0);  // O_L += P0 V0_L
        wgmma_wait<0>();
        keep_alive(pb);
        PHASE(2);
        if (fill0) copy(stage0, 0, page0);  // V0_L is free
        PHASE(3);
        mbar_wait(scale1_bar, scale1_phase);
        scale1_phase ^= 1;
        PHASE(0);
        float s1[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          s1[i] = s_scale1[frag_row + 8 * i];
          l[i] *= s1[i];  // now in m1's units
        }
        if constexpr (!kQk0) {
          // The piece's last pair: wg1 left the final maxima and its row
          // sums with its scale; this warpgroup's sums are final now.
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const int r = frag_row + 8 * i;
            m_fin[i] = s_max[r];
            l_tot[i] = quad_sum(l[i]);
            l_tot[i] += s_sum[sum_slot + kRows + r];
          }
        }
        rescale(o, s1);
        PHASE(1);
        bar_sync(kP1Ready);
        PHASE(0);
        if constexpr (kHas1) {
          wait_share(1, 0, phase[1]);  // V1_L: this warpgroup's own copies
          zero_tail(stage1, 0, valid1, t);
          pv_shared(o, stage1, 0);  // O_L += P1 V1_L
        }
        PHASE(2);
        if constexpr (kQk0) {
          issue_qk(Int<0>{}, Int<0>{}, Flag<true>{}, stage0, phase[0] ^ 1);
          PHASE(5);
        }
        if constexpr (kHas1) {
          if constexpr (kQk0) {
            wgmma_wait<1>();  // P1 V1_L done: stage 1's V_L and P1 are free
          } else {
            wgmma_wait<0>();
          }
        }
        PHASE(2);
        if (fill1 && (kQk0 || !bulk_out)) copy(stage1, 1, page1);  // else after the bulk epilogue
        PHASE(3);
        if constexpr (kQk0) {
          issue_qk(Int<0>{}, Int<1>{}, Flag<false>{}, stage0, phase[0] ^ 1);
        }
        wgmma_wait<0>();
        PHASE(5);
      } else {
        bar_sync(kScale0Ready);
        PHASE(0);
        // O_R and l are in the units of the previous pair's m1: wg0's
        // scale0 takes them to m0, this softmax's alpha to m1.
        float s0[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          m_old[i] = s_max[frag_row + 8 * i];
          s0[i] = s_scale0[frag_row + 8 * i];
          l[i] *= s0[i];
        }
        // O_R to m0's units, then O_R += P0 V0_R under this softmax.
        rescale(o, s0);
        bar_sync(kP0Ready);
        PHASE(0);
        wait_share(0, 1, phase[0]);  // V0_R: this warpgroup's own copies
        zero_tail(stage0, 1, valid0, t);
        pv_shared(o, stage0, 1);
        softmax_block(sc, kHas1, key0 + kBlock, limit, p.scale_log2, m_old, m_new, alpha, l);
        if constexpr (!kQk0) {
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            m_fin[i] = m_new[i];
            l_tot[i] = quad_sum(l[i]);
          }
        }
        __syncwarp();
        if ((lane & 3) == 0)
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            s_max[frag_row + 8 * i] = m_new[i];
            s_scale1[frag_row + 8 * i] = alpha[i];
            if constexpr (!kQk0) s_sum[sum_slot + kRows + frag_row + 8 * i] = l_tot[i];
          }
        mbar_arrive(scale1_bar);  // every thread: its writes are released
        if constexpr (!kQk0) {
          // The piece's last pair: every QK^T of the piece is done (wg0's
          // before its scale0 above), so the next piece's Q may land now.
          if (nxt.b < p.batch)
            load_q(q_tile, q + (static_cast<size_t>(nxt.b) * R + row0) * kD, min(kRows, R - row0), t, q_bar);
        }
        PHASE(1);
        if constexpr (kHas1) {
          const float one[2] = {1.f, 1.f};
          store_p(sc, one, stage1, frag_row, lane);  // P1 for wg0
          fence_proxy_async();
        }
        bar_arrive(kP1Ready);
        if constexpr (!kQk0) {
#pragma unroll
          for (int i = 0; i < 2; ++i) l_tot[i] += s_sum[sum_slot + frag_row + 8 * i] * alpha[i];  // wg0's, to m1
        }
        wgmma_wait<0>();  // P0 V0_R done: stage 0's V_R and P0 are free
        PHASE(2);
        if (fill0 && (kQk0 || !bulk_out || MLA_EPI_STAGE1)) copy(stage0, 0, page0);  // else after the bulk epilogue
        PHASE(3);
        rescale(o, alpha);
        if constexpr (kHas1) {
          pack_p(sc, pb);
          zero_tail(stage1, 1, valid1, t);
          pv_registers(o, pb, stage1, 1);  // O_R += P1 V1_R
          wgmma_wait<0>();
          keep_alive(pb);
        }
        PHASE(2);
        if (fill1 && (kQk0 || !bulk_out || !MLA_EPI_STAGE1)) copy(stage1, 1, page1);  // else after the bulk epilogue
        PHASE(3);
        if constexpr (kQk1) {
          issue_qk(Int<1>{}, Int<1>{}, Flag<true>{}, stage1, phase[1] ^ 1);
          PHASE(5);
          issue_qk(Int<1>{}, Int<0>{}, Flag<false>{}, stage1, phase[1] ^ 1);
        }
        wgmma_wait<0>();
        PHASE(5);
      }
#ifdef MLA_TRACE
      if (t == 0) atomicAdd(&g_mla_trace[w][7], 1ull);
#endif
      phase[0] ^= 1;
      if (kHas1) phase[1] ^= 1;
      i0 += 2;
    };
    using Yes = Flag<true>;
    using No = Flag<false>;
    while (i0 + 3 < n) pair(Yes{}, Yes{}, Yes{});
    if (i0 + 2 < n) pair(Yes{}, No{}, Yes{});  // n odd: the last pair has one block
    if (i0 + 1 < n) {
      pair(No{}, No{}, Yes{});
    } else {
      pair(No{}, No{}, No{});
    }

    TRACE_RESET();
    // Epilogue: each warpgroup stores its half of O, normalized by both
    // warpgroups' sums, in the units of the final maxima.
    float inv[2], lse[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float lt = l_tot[i];
      inv[i] = lt > 0.f ? 1.f / lt : 0.f;
      lse[i] = lt > 0.f ? m_fin[i] * 0.6931471805599453f + logf(lt) : -INFINITY;
    }
    if (bulk_out) {
      bulk_epilogue(o, inv, lse, stage0, stage1, q_tile + 3 * kTileBytes + kBulkSpareOffset, b, row0, frag_row, w, lane,
                    p);
      // The copies have read this warpgroup's panels: its refill of them
      // for the next piece, deferred from the last pair. A CTA's last
      // piece has none, and each warp's copies were read before it left
      // bulk_epilogue, so the CTA may exit.
      if (nxt.b < p.batch) {
        warpgroup_sync(w);
        if (w == 0 && nxt.blocks() > 1) copy(stage1, 1, block_page(nxt, 1, p));
#if MLA_EPI_STAGE1
        if (w == 1 && nxt.blocks() > 1) copy(stage1, 1, block_page(nxt, 1, p));
#else
        if (w == 1) copy(stage0, 0, block_page(nxt, 0, p));
#endif
      }
    } else {
      finish_rows(o, inv, lse, sched, b, part, first, nb, per, row0, frag_row, w, lane, p);
    }
    PHASE(11);
    cur = nxt;
    ++piece;
#ifdef MLA_TRACE
    if (t == 0) atomicAdd(&g_mla_trace[w][8], 1ull);
#endif
  }
#ifdef MLA_TRACE
  if (t == 0) atomicAdd(&g_mla_trace[w][9], static_cast<unsigned long long>(clock64() - t_begin));
#endif
}
}  // namespace

extern "C" __global__ void __launch_bounds__(MLA_THREADS, 1) mla_decode_mma(MlaDecodeParams p) {
  decode_part<false>(p);
}

extern "C" __global__ void __launch_bounds__(MLA_THREADS, 1) mla_decode_wgmma(MlaDecodeParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  decode_part<true>(p);
#else
  __trap();  // needs sm_90a
#endif
}

extern "C" __global__ void __launch_bounds__(MLA_THREADS, 1) mla_decode_seesaw(MlaDecodeParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  decode_part_seesaw(p);
#else
  __trap();  // needs sm_90a
#endif
}

// grid (batch, cdiv(s_q h_q, 8)), 256 threads: one warp per query row.
extern "C" __global__ void __launch_bounds__(256) mla_decode_combine(MlaDecodeParams p) {
  const Schedule sched{reinterpret_cast<const int*>(p.sched), p.batch};
  const int b = blockIdx.x;
  const int R = p.s_q * p.h_q;
  const int row = blockIdx.y * 8 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= R) return;
  const int per = sched.per_part();
  const int first = sched.prefix()[b] + kOverhead;
  const int nb = cdiv(reinterpret_cast<const int*>(p.seq_lens)[b], kBlock);
  const int n = (first + nb - 1) / per - first / per + 1;
  if (n == 1) return;  // written by the decode kernel
  const int slot0 = sched.split_base()[b];
  const float* plse = reinterpret_cast<const float*>(p.partial_lse);
  float m = -INFINITY;
  for (int i = 0; i < n; ++i) m = fmaxf(m, plse[static_cast<size_t>(slot0 + i) * R + row]);
  float acc[16];
#pragma unroll
  for (int j = 0; j < 16; ++j) acc[j] = 0.f;
  float wsum = 0.f;
  for (int i = 0; i < n; ++i) {
    const float w = expf(plse[static_cast<size_t>(slot0 + i) * R + row] - m);  // 0 for an empty split
    wsum += w;
    const float4* src = reinterpret_cast<const float4*>(
        reinterpret_cast<const float*>(p.partial_out) + (static_cast<size_t>(slot0 + i) * R + row) * kDV + lane * 16);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float4 v = src[j];
      acc[4 * j] += w * v.x;
      acc[4 * j + 1] += w * v.y;
      acc[4 * j + 2] += w * v.z;
      acc[4 * j + 3] += w * v.w;
    }
  }
  const float inv = 1.f / wsum;
  __align__(16) __nv_bfloat162 packed[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) packed[j] = __floats2bfloat162_rn(acc[2 * j] * inv, acc[2 * j + 1] * inv);
  uint4* dst = reinterpret_cast<uint4*>(reinterpret_cast<__nv_bfloat16*>(p.out) + (static_cast<size_t>(b) * R + row) * kDV +
                                        lane * 16);
  dst[0] = reinterpret_cast<const uint4*>(packed)[0];
  dst[1] = reinterpret_cast<const uint4*>(packed)[1];
  if (lane == 0) {
    const int sq = row / p.h_q, head = row % p.h_q;
    reinterpret_cast<float*>(p.lse)[(static_cast<size_t>(b) * p.h_q + head) * p.s_q + sq] = m + logf(wsum);
  }
}

// One warp per row: cache[slots[i]] = rows[i].
extern "C" __global__ void __launch_bounds__(256) mla_cache_scatter(MlaRowCopyParams p) {
  const int i = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (i >= p.count) return;
  const int slot = reinterpret_cast<const int*>(p.slots)[i];
  const uint4* src = reinterpret_cast<const uint4*>(p.rows) + static_cast<size_t>(i) * kChunksPerRow;
  uint4* dst = reinterpret_cast<uint4*>(p.cache) + static_cast<size_t>(slot) * kChunksPerRow;
  for (int c = threadIdx.x & 31; c < kChunksPerRow; c += 32) dst[c] = src[c];
}

// One warp per row: rows[i] = cache[slots[i]].
extern "C" __global__ void __launch_bounds__(256) mla_cache_gather(MlaRowCopyParams p) {
  const int i = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (i >= p.count) return;
  const int slot = reinterpret_cast<const int*>(p.slots)[i];
  const uint4* src = reinterpret_cast<const uint4*>(p.cache) + static_cast<size_t>(slot) * kChunksPerRow;
  uint4* dst = reinterpret_cast<uint4*>(p.rows) + static_cast<size_t>(i) * kChunksPerRow;
  for (int c = threadIdx.x & 31; c < kChunksPerRow; c += 32) dst[c] = src[c];
}
