// Benchmark and sanitizer driver for kernels/mla_decode.cu, compiled on the
// GPU machine by hack/gpu/run.sh. It builds the committed kernel source into
// itself and launches it exactly as the Go engine does (same parameter
// struct, grid and shared memory).
//
//   mla_bench check   small mixed batches, both variants, against a float64
//                     CPU reference (the case compute-sanitizer runs)
//   mla_bench bench   copy bandwidth, then the FlashMLA anchor shapes
#ifdef MLA_KERNEL_SOURCE  // an earlier version, for side-by-side timing
#include MLA_KERNEL_SOURCE
#else
#include "../../kernels/mla_decode.cu"
#endif

#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#define CK(x)                                                                                  \
  do {                                                                                         \
    cudaError_t e_ = (x);                                                                      \
    if (e_ != cudaSuccess) {                                                                   \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));      \
      exit(1);                                                                                 \
    }                                                                                          \
  } while (0)

namespace {

using Kernel = void (*)(MlaDecodeParams);

struct Variant {
  const char* name;
  Kernel fn;
};
const Variant kVariants[] = {
    {"mma", mla_decode_mma},
    {"wgmma", mla_decode_wgmma},
#ifdef MLA_HAS_SEESAW  // absent from earlier kernel versions built for side-by-side timing
    {"seesaw", mla_decode_seesaw},
#endif
#ifdef MLA_HAS_SEESAW_PAIR
    {"pair", mla_decode_seesaw_pair},
#endif
};

// only: a comma-separated list of variant names, or null for all.
bool selected(const char* only, const char* name) {
  if (!only) return true;
  const std::string list = std::string(",") + only + ",";
  return list.find(std::string(",") + name + ",") != std::string::npos;
}

int g_sms = 0;
// Parts per query tile for the check: 0 means as the engine does (SMs /
// tiles); a small number makes long chains of blocks across sequences.
int g_parts = 0;

// The committed kernel schedules in a separate one-warp launch; the v6
// experiment (docs/kernel-notes.md) fused it into the decode kernel and
// defines MLA_FUSED_SCHEDULE. Both can be timed side by side.
#ifdef MLA_FUSED_SCHEDULE
constexpr bool kSeparateSchedule = false;
void launch_schedule(const MlaDecodeParams&, cudaStream_t) {}
#else
constexpr bool kSeparateSchedule = true;
void launch_schedule(const MlaDecodeParams& p, cudaStream_t st) { mla_decode_schedule<<<1, 32, 0, st>>>(p); }
#endif

__global__ void fill_random_bf16(__nv_bfloat16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ (uint32_t(i >> 32) * 40503u) ^ seed;
    x ^= x >> 15; x *= 2246822519u; x ^= x >> 13; x *= 3266489917u; x ^= x >> 16;
    float v = (float(x & 0xFFFFFF) / float(0xFFFFFF)) * 2.f - 1.f;
    if (fabsf(v) < 1e-3f) v = 0.5f;  // never zero
    p[i] = __float2bfloat16(v);
  }
}

struct Problem {
  int batch, s_q, h_q, max_pages;
  float scale;
  int rows() const { return s_q * h_q; }
  int tiles() const { return cdiv(rows(), MLA_TILE_ROWS); }
  int parts() const { return g_parts > 0 ? g_parts : std::max(1, g_sms / tiles()); }
};

struct Buffers {
  int* sched = nullptr;
  float* partial_out = nullptr;
  float* partial_lse = nullptr;
  void alloc(const Problem& pr) {
    CK(cudaMalloc(&sched, sizeof(int) * MLA_SCHED_INTS(pr.batch, pr.parts())));
    CK(cudaMalloc(&partial_out, sizeof(float) * size_t(2 * pr.parts()) * pr.rows() * MLA_LATENT_DIM));
    CK(cudaMalloc(&partial_lse, sizeof(float) * size_t(2 * pr.parts()) * pr.rows()));
  }
  void release() {
    cudaFree(sched); cudaFree(partial_out); cudaFree(partial_lse);
  }
};

// The kernel a variant launches for a problem: the CTA-pair seesaw kernel
// needs an even number of query tiles, and falls back as the engine does.
Kernel kernel_for(Kernel fn, const Problem& pr) {
#ifdef MLA_HAS_SEESAW_PAIR
  if (fn == mla_decode_seesaw_pair && pr.tiles() % 2 != 0) return mla_decode_seesaw;
#endif
  (void)pr;
  return fn;
}

void launch_decode(Kernel fn, const Problem& pr, const MlaDecodeParams& p, cudaStream_t st) {
  kernel_for(fn, pr)<<<dim3(pr.parts(), pr.tiles()), MLA_THREADS, MLA_SMEM_BYTES, st>>>(p);
}
void launch_combine(const Problem& pr, const MlaDecodeParams& p, cudaStream_t st) {
#ifndef MLA_HAS_FUSED_COMBINE  // else the decode kernel combines split sequences itself
  mla_decode_combine<<<dim3(pr.batch, cdiv(pr.rows(), 8)), 256, 0, st>>>(p);
#else
  (void)pr, (void)p, (void)st;
#endif
}

// Whether a layer's calls launch combine once the step's schedule exists.
// The Go engine skips it where its host-side prediction of the schedule
// (splitSlots) splits no sequence; here the schedule's own slot count is
// read back instead, outside any timing. A kernel source without
// mla_schedule_constants (older than v12), a fused schedule, or
// -DMLA_BENCH_COMBINE_ALWAYS (for an A/B) launches it on every call.
bool combine_needed(const Buffers& bufs) {
#if defined(MLA_HAS_SCHEDULE_CONSTANTS) && !defined(MLA_BENCH_COMBINE_ALWAYS)
  if (!kSeparateSchedule) return true;
  CK(cudaDeviceSynchronize());
  int header[2];
  CK(cudaMemcpy(header, bufs.sched, sizeof(header), cudaMemcpyDeviceToHost));
  return header[1] > 0;
#else
  (void)bufs;
  return true;
#endif
}

// One layer's launches once the step's schedule exists: decode and, where
// the schedule splits a sequence, combine.
void launch_layer(Kernel fn, const Problem& pr, const MlaDecodeParams& p, cudaStream_t st, bool combine) {
  launch_decode(fn, pr, p, st);
  if (combine) launch_combine(pr, p, st);
}

#ifdef MLA_KV_MAP_BYTES  // absent from kernel versions before v10
// The seesaw kernel's tensor map over a cache, as the Go engine makes it:
// [rows][576] bf16, 64 x 64 boxes, 128-byte swizzle; encoded once per cache
// and kept in device memory. The benchmark's caches are one layer of at
// most 2^18 pages.
uint64_t kv_map_for(const void* cache) {
  static std::vector<std::pair<const void*, uint64_t>> maps;
  for (const auto& m : maps)
    if (m.first == cache) return m.second;
  CUtensorMap map;
  cuuint64_t dims[2] = {MLA_HEAD_DIM, cuuint64_t(1) << 24};
  cuuint64_t strides[1] = {MLA_HEAD_DIM * 2};
  cuuint32_t box[2] = {MLA_KV_MAP_BOX, MLA_KV_MAP_BOX};
  cuuint32_t elem[2] = {1, 1};
  CUresult r = cuTensorMapEncodeTiled(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(cache), dims, strides, box,
                                      elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) { fprintf(stderr, "cuTensorMapEncodeTiled: %d\n", int(r)); exit(1); }
  void* d = nullptr;
  CK(cudaMalloc(&d, sizeof(map)));
  CK(cudaMemcpy(d, &map, sizeof(map), cudaMemcpyHostToDevice));
  maps.emplace_back(cache, uint64_t(d));
  return uint64_t(d);
}
#endif

MlaDecodeParams make_params(const Problem& pr, const Buffers& bufs, const void* q, const void* cache, const int* table,
                            const int* lens, void* out, float* lse) {
  MlaDecodeParams p{};
  p.q = uint64_t(q); p.cache = uint64_t(cache); p.block_table = uint64_t(table); p.seq_lens = uint64_t(lens);
  p.out = uint64_t(out); p.lse = uint64_t(lse); p.sched = uint64_t(bufs.sched);
  p.partial_out = uint64_t(bufs.partial_out); p.partial_lse = uint64_t(bufs.partial_lse);
  p.batch = pr.batch; p.s_q = pr.s_q; p.h_q = pr.h_q; p.max_pages = pr.max_pages; p.num_parts = pr.parts();
  p.scale = pr.scale; p.scale_log2 = pr.scale * 1.4426950408889634f;
#ifdef MLA_KV_MAP_BYTES
  p.kv_map = kv_map_for(cache);
#endif
  return p;
}

// A whole decode call: schedule, then the layer's launches.
void launch(Kernel fn, const Problem& pr, const Buffers& bufs, const void* q, const void* cache, const int* table,
            const int* lens, void* out, float* lse, cudaStream_t st) {
  const MlaDecodeParams p = make_params(pr, bufs, q, cache, table, lens, out, lse);
  if constexpr (kSeparateSchedule) launch_schedule(p, st);
  launch_layer(fn, pr, p, st, combine_needed(bufs));
}

float bf2f(uint16_t v) { uint32_t u = uint32_t(v) << 16; float f; memcpy(&f, &u, 4); return f; }

// ---------------------------------------------------------------- check

int check_case(int h_q, int s_q, const std::vector<int>& lens, uint32_t seed) {
  Problem pr{int(lens.size()), s_q, h_q, 0, 1.f / sqrtf(float(MLA_HEAD_DIM))};
  int total_pages = 0;
  for (int l : lens) { pr.max_pages = std::max(pr.max_pages, cdiv(l, MLA_PAGE)); total_pages += cdiv(l, MLA_PAGE); }
  total_pages += 3;  // unused pages in the pool
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  auto rnd_bf16 = [&]() { float v = u(rng); if (fabsf(v) < 1e-3f) v = 0.25f; __nv_bfloat16 b = __float2bfloat16(v); uint16_t r; memcpy(&r, &b, 2); return r; };
  std::vector<uint16_t> cache(size_t(total_pages) * MLA_PAGE * MLA_HEAD_DIM), q(size_t(pr.batch) * pr.rows() * MLA_HEAD_DIM);
  for (auto& v : cache) v = rnd_bf16();
  for (auto& v : q) v = rnd_bf16();
  std::vector<int> perm(total_pages);
  for (int i = 0; i < total_pages; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int> table(size_t(pr.batch) * pr.max_pages, 0);
  int next = 0;
  for (int b = 0; b < pr.batch; ++b)
    for (int k = 0; k < cdiv(lens[b], MLA_PAGE); ++k) table[b * pr.max_pages + k] = perm[next++];
  // Rows past each sequence's end in its last page are NaN: no kernel may
  // let them reach a product (the seesaw kernel's bulk copies read whole
  // pages and clear those rows).
  for (int b = 0; b < pr.batch; ++b) {
    const int last = table[b * pr.max_pages + (lens[b] - 1) / MLA_PAGE];
    for (int r = (lens[b] - 1) % MLA_PAGE + 1; r < MLA_PAGE; ++r)
      std::fill_n(&cache[(size_t(last) * MLA_PAGE + r) * MLA_HEAD_DIM], MLA_HEAD_DIM, uint16_t(0x7FC0));
  }

  // float64 reference
  std::vector<double> ref(size_t(pr.batch) * pr.rows() * MLA_LATENT_DIM), ref_lse(size_t(pr.batch) * pr.rows());
  for (int b = 0; b < pr.batch; ++b)
    for (int r = 0; r < pr.rows(); ++r) {
      const int sq = r / h_q, hd = r % h_q, limit = lens[b] - s_q + sq;
      const uint16_t* qr = &q[(size_t(b) * pr.rows() + r) * MLA_HEAD_DIM];
      std::vector<double> sc(limit + 1);
      double m = -INFINITY;
      for (int j = 0; j <= limit; ++j) {
        const uint16_t* kr = &cache[(size_t(table[b * pr.max_pages + j / 64]) * 64 + j % 64) * MLA_HEAD_DIM];
        double d = 0;
        for (int c = 0; c < MLA_HEAD_DIM; ++c) d += double(bf2f(qr[c])) * bf2f(kr[c]);
        sc[j] = d * pr.scale;
        m = std::max(m, sc[j]);
      }
      double l = 0;
      double* o = &ref[(size_t(b) * pr.rows() + r) * MLA_LATENT_DIM];
      for (int j = 0; j <= limit; ++j) {
        const double w = exp(sc[j] - m);
        l += w;
        const uint16_t* kr = &cache[(size_t(table[b * pr.max_pages + j / 64]) * 64 + j % 64) * MLA_HEAD_DIM];
        for (int c = 0; c < MLA_LATENT_DIM; ++c) o[c] += w * bf2f(kr[c]);
      }
      for (int c = 0; c < MLA_LATENT_DIM; ++c) o[c] /= l;
      ref_lse[(size_t(b) * h_q + hd) * s_q + sq] = m + log(l);
    }

  void *d_q, *d_cache, *d_out; int *d_table, *d_lens; float* d_lse;
  CK(cudaMalloc(&d_q, q.size() * 2)); CK(cudaMalloc(&d_cache, cache.size() * 2));
  CK(cudaMalloc(&d_out, ref.size() * 2)); CK(cudaMalloc(&d_lse, ref_lse.size() * 4));
  CK(cudaMalloc(&d_table, table.size() * 4)); CK(cudaMalloc(&d_lens, lens.size() * 4));
  CK(cudaMemcpy(d_q, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_cache, cache.data(), cache.size() * 2, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_table, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_lens, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice));
  Buffers bufs; bufs.alloc(pr);
  int failures = 0;
  // Each variant twice: a whole call, then a layer call reusing its schedule.
  for (int run = 0; run < 2 * int(sizeof(kVariants) / sizeof(kVariants[0])); ++run) {
    const Variant& v = kVariants[run / 2];
    const bool reuse = run % 2 == 1;
    CK(cudaMemset(d_out, 0xFF, ref.size() * 2));  // NaN poison
    CK(cudaMemset(d_lse, 0xFF, ref_lse.size() * 4));
    if (reuse) {
      launch_layer(v.fn, pr, make_params(pr, bufs, d_q, d_cache, d_table, d_lens, d_out, d_lse), 0, combine_needed(bufs));
    } else {
      launch(v.fn, pr, bufs, d_q, d_cache, d_table, d_lens, d_out, d_lse, 0);
    }
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<uint16_t> out(ref.size()); std::vector<float> lse(ref_lse.size());
    CK(cudaMemcpy(out.data(), d_out, out.size() * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(lse.data(), d_lse, lse.size() * 4, cudaMemcpyDeviceToHost));
    double num = 0, den = 0, lse_err = 0; long nan = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      const double x = bf2f(out[i]);
      if (std::isnan(x)) { ++nan; continue; }
      num += (x - ref[i]) * (x - ref[i]); den += ref[i] * ref[i];
    }
    for (size_t i = 0; i < lse.size(); ++i) {
      if (std::isnan(lse[i])) { ++nan; continue; }
      lse_err = std::max(lse_err, fabs(lse[i] - ref_lse[i]));
    }
    const double rel = sqrt(num / den);
    const bool ok = nan == 0 && rel < 1e-2 && lse_err < 2e-3;
    printf("check %-6s %-6s h_q=%3d s_q=%d b=%d parts=%d: rel_l2=%.2e max_lse_err=%.2e nan=%ld %s\n", v.name,
           reuse ? "reuse" : "call", h_q, s_q, pr.batch, pr.parts(), rel, lse_err, nan, ok ? "ok" : "FAIL");
    failures += !ok;
  }
  bufs.release();
  cudaFree(d_q); cudaFree(d_cache); cudaFree(d_out); cudaFree(d_lse); cudaFree(d_table); cudaFree(d_lens);
  return failures;
}

int run_check() {
  int f = 0;
  f += check_case(32, 2, {2, 3, 63, 64, 65, 200}, 1);  // lengths >= s_q
  f += check_case(128, 1, {1, 64, 65, 700}, 2);
  f += check_case(16, 1, {5000}, 3);  // one sequence over many splits
  {
    // Few parts: each walks many sequences, so blocks are prefetched across
    // sequence boundaries and pieces start with either warpgroup.
    std::mt19937 rng(11);
    std::uniform_int_distribution<int> d(2, 330);
    std::vector<int> lens(24);
    for (int& l : lens) l = d(rng);
    g_parts = 3;
    f += check_case(128, 2, lens, 4);
    g_parts = 5;
    f += check_case(64, 1, lens, 5);
    // Equal lengths: 6 x 4 blocks over 4 parts balance at 9 cost units a
    // part, splitting sequences; a scheduler allowed larger parts where
    // none splits (MLA_SCHED_UNSPLIT_SLACK) takes 12, and leaves a part empty.
    g_parts = 4;
    f += check_case(128, 1, std::vector<int>(6, 200), 6);
    g_parts = 0;
  }
  printf("check: %s\n", f ? "FAILED" : "all ok");
  return f ? 1 : 0;
}

// ---------------------------------------------------------------- bench

struct Anchor { int b, h, sk; double us; };
// FlashMLA on one H100 (../shared/anchors/flashmla-h100.md, 2026-11-27).
const Anchor kAnchors[] = {
    {64, 128, 1024, 42.8}, {64, 128, 4096, 127.3}, {64, 128, 16384, 518.6}, {64, 128, 32768, 1018.4},
    {128, 128, 1024, 77.4}, {128, 128, 4096, 246.7}, {128, 128, 16384, 1023.6}, {128, 128, 32768, 1962.0},
    {64, 64, 1024, 51.5}, {64, 64, 4096, 127.1}, {64, 64, 16384, 451.6}, {64, 64, 32768, 861.3},
    {128, 64, 1024, 63.6}, {128, 64, 4096, 215.0}, {128, 64, 16384, 878.3}, {128, 64, 32768, 1686.3},
    {64, 16, 1024, 39.6}, {64, 16, 4096, 114.1}, {64, 16, 16384, 414.8}, {64, 16, 32768, 813.5},
    {128, 16, 1024, 60.5}, {128, 16, 4096, 211.6}, {128, 16, 16384, 819.0}, {128, 16, 32768, 1615.4},
};

double median(std::vector<float> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }

double copy_bandwidth() {
  const size_t n = size_t(2) << 30;
  void *a, *b;
  CK(cudaMalloc(&a, n)); CK(cudaMalloc(&b, n));
  fill_random_bf16<<<1024, 256>>>((__nv_bfloat16*)a, n / 2, 7);
  cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  std::vector<float> ts;
  for (int i = 0; i < 12; ++i) {
    CK(cudaEventRecord(e0));
    CK(cudaMemcpyAsync(i & 1 ? a : b, i & 1 ? b : a, n, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1));
    float ms; CK(cudaEventElapsedTime(&ms, e0, e1));
    if (i >= 2) ts.push_back(ms);
  }
  cudaFree(a); cudaFree(b);
  return 2.0 * n / (median(ts) * 1e-3) / 1e9;
}

struct Pool {
  __nv_bfloat16* cache = nullptr;
  size_t pages = 0;
} g_pool;

// Times one shape: `sets` input sets (own pages, q, table) rotated so L2 never
// holds the next iteration's data. Returns the median microseconds.
//
// *us is one layer's call with the step's schedule already computed (the
// schedule depends only on the lengths, which all sets share, so it runs once
// before timing, as a server runs it once per step for all layers);
// *us_step is a whole call including the schedule launch.
void time_shape(Kernel fn, int batch, int h_q, int s_q, const std::vector<int>& lens, int iters, double* bytes,
                double* flops, double* us, double* us_step) {
  Problem pr{batch, s_q, h_q, 0, 1.f / sqrtf(float(MLA_HEAD_DIM))};
  size_t pages_per_set = 0;
  for (int l : lens) { pr.max_pages = std::max(pr.max_pages, cdiv(l, MLA_PAGE)); pages_per_set += cdiv(l, MLA_PAGE); }
  const size_t set_bytes = pages_per_set * MLA_TILE_BYTES;
  int sets = int(std::max<size_t>(2, (size_t(400) << 20) / set_bytes + 1));
  sets = int(std::min<size_t>(sets, g_pool.pages / pages_per_set));
  if (sets < 1) { fprintf(stderr, "pool too small\n"); exit(1); }
  std::mt19937 rng(batch * 131 + h_q * 7 + int(lens[0]));
  std::vector<int> perm(pages_per_set * sets);
  for (size_t i = 0; i < perm.size(); ++i) perm[i] = int(i);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int> table(size_t(sets) * batch * pr.max_pages, 0);
  size_t next = 0;
  for (int s = 0; s < sets; ++s)
    for (int b = 0; b < batch; ++b)
      for (int k = 0; k < cdiv(lens[b], MLA_PAGE); ++k) table[(size_t(s) * batch + b) * pr.max_pages + k] = perm[next++];
  int *d_table, *d_lens; __nv_bfloat16 *d_q, *d_out; float* d_lse;
  const size_t q_elems = size_t(batch) * pr.rows() * MLA_HEAD_DIM;
  CK(cudaMalloc(&d_table, table.size() * 4)); CK(cudaMalloc(&d_lens, lens.size() * 4));
  CK(cudaMalloc(&d_q, q_elems * 2 * sets));
  CK(cudaMalloc(&d_out, size_t(batch) * pr.rows() * MLA_LATENT_DIM * 2)); CK(cudaMalloc(&d_lse, size_t(batch) * pr.rows() * 4));
  CK(cudaMemcpy(d_table, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_lens, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice));
  fill_random_bf16<<<1024, 256>>>(d_q, q_elems * sets, 99);
  Buffers bufs; bufs.alloc(pr);
  // Launches queue back to back (as in serving); one event pair per call.
  std::vector<cudaEvent_t> ev(2 * (iters + 3));
  for (auto& e : ev) CK(cudaEventCreate(&e));
  auto params = [&](int i) {
    const int s = i % sets;
    return make_params(pr, bufs, d_q + q_elems * s, g_pool.cache, d_table + size_t(s) * batch * pr.max_pages, d_lens,
                       d_out, d_lse);
  };
  if constexpr (kSeparateSchedule) launch_schedule(params(0), 0);
  const bool combine = combine_needed(bufs);
  for (int with_schedule = 0; with_schedule < 2; ++with_schedule) {
    for (int i = 0; i < iters + 3; ++i) {
      const MlaDecodeParams p = params(i);
      CK(cudaEventRecord(ev[2 * i]));
      if (with_schedule && kSeparateSchedule) launch_schedule(p, 0);
      launch_layer(fn, pr, p, 0, combine);
      CK(cudaEventRecord(ev[2 * i + 1]));
    }
    CK(cudaDeviceSynchronize());
    std::vector<float> ts;
    for (int i = 3; i < iters + 3; ++i) {
      float ms; CK(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]));
      ts.push_back(ms);
    }
    *(with_schedule ? us_step : us) = median(ts) * 1e3;
  }
  for (auto& e : ev) cudaEventDestroy(e);
  CK(cudaGetLastError());
  bufs.release();
  cudaFree(d_table); cudaFree(d_lens); cudaFree(d_q); cudaFree(d_out); cudaFree(d_lse);
  double tok = 0, work = 0;
  for (int l : lens) { tok += l; work += double(l); }
  // FlashMLA's accounting: q + cache rows + out, in bytes; 2 matmuls.
  *bytes = double(batch) * h_q * s_q * MLA_HEAD_DIM * 2 + tok * MLA_HEAD_DIM * 2 + double(batch) * h_q * s_q * MLA_LATENT_DIM * 2;
  *flops = double(h_q) * s_q * work * (2.0 * MLA_HEAD_DIM + 2.0 * MLA_LATENT_DIM);
}

// Median time of each launch of one shape (schedule, decode, combine), to
// see what the fixed costs of short sequences are.
void phase_breakdown(Kernel fn, const char* name, int batch, int h_q, int s_k) {
  Problem pr{batch, 1, h_q, cdiv(s_k, MLA_PAGE), 1.f / sqrtf(float(MLA_HEAD_DIM))};
  const int pages = batch * pr.max_pages;
  std::vector<int> table(pages), lens(batch, s_k);
  for (int i = 0; i < pages; ++i) table[i] = i;
  int *d_table, *d_lens; __nv_bfloat16 *d_q, *d_out; float* d_lse;
  CK(cudaMalloc(&d_table, pages * 4)); CK(cudaMalloc(&d_lens, batch * 4));
  CK(cudaMalloc(&d_q, size_t(batch) * h_q * MLA_HEAD_DIM * 2));
  CK(cudaMalloc(&d_out, size_t(batch) * h_q * MLA_LATENT_DIM * 2)); CK(cudaMalloc(&d_lse, size_t(batch) * h_q * 4));
  CK(cudaMemcpy(d_table, table.data(), pages * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_lens, lens.data(), batch * 4, cudaMemcpyHostToDevice));
  fill_random_bf16<<<256, 256>>>(d_q, size_t(batch) * h_q * MLA_HEAD_DIM, 5);
  Buffers bufs; bufs.alloc(pr);
  const MlaDecodeParams p = make_params(pr, bufs, d_q, g_pool.cache, d_table, d_lens, d_out, d_lse);
  const int iters = 20;
  std::vector<cudaEvent_t> ev(4 * iters);
  for (auto& e : ev) CK(cudaEventCreate(&e));
  for (int i = 0; i < iters; ++i) {
    CK(cudaEventRecord(ev[4 * i]));
    if constexpr (kSeparateSchedule) launch_schedule(p, 0);
    CK(cudaEventRecord(ev[4 * i + 1]));
    launch_decode(fn, pr, p, 0);
    CK(cudaEventRecord(ev[4 * i + 2]));
    launch_combine(pr, p, 0);
    CK(cudaEventRecord(ev[4 * i + 3]));
  }
  CK(cudaDeviceSynchronize());
  std::vector<float> t[3];
  for (int i = 2; i < iters; ++i)
    for (int j = 0; j < 3; ++j) {
      float ms; CK(cudaEventElapsedTime(&ms, ev[4 * i + j], ev[4 * i + j + 1]));
      t[j].push_back(ms * 1e3f);
    }
  printf("phases %s b=%d h_q=%d s_k=%d: schedule %.1f us, decode %.1f us, combine %.1f us\n", name, batch, h_q, s_k,
         median(t[0]), median(t[1]), median(t[2]));
  for (auto& e : ev) cudaEventDestroy(e);
  bufs.release();
  cudaFree(d_table); cudaFree(d_lens); cudaFree(d_q); cudaFree(d_out); cudaFree(d_lse);
}

int run_bench(const char* only) {
  const double copy = copy_bandwidth();
  printf("copy: device-to-device %.0f GB/s (read + write)\n", copy);
#ifdef MLA_HAS_SEESAW_PAIR
  {  // how many CTA pairs the card holds at once (one CTA per SM)
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(g_sms / 2, 2);
    cfg.blockDim = dim3(MLA_THREADS);
    cfg.dynamicSmemBytes = MLA_SMEM_BYTES;
    int clusters = 0;
    CK(cudaOccupancyMaxActiveClusters(&clusters, mla_decode_seesaw_pair, &cfg));
    printf("pair kernel: %d clusters of 2 at once (%d SMs)\n", clusters, g_sms);
  }
#endif
  // One pool of pages big enough for two sets of the largest shape.
  g_pool.pages = size_t(2) * 128 * 32768 / MLA_PAGE + 64;
  CK(cudaMalloc(&g_pool.cache, g_pool.pages * MLA_TILE_BYTES));
  fill_random_bf16<<<4096, 256>>>(g_pool.cache, g_pool.pages * MLA_TILE_BYTES / 2, 12345);
  CK(cudaDeviceSynchronize());
  // BENCH_QUICK: only the anchor table (for A/B runs of several builds).
  const bool quick = getenv("BENCH_QUICK") != nullptr;
  for (const Variant& v : kVariants) {
    if (!quick && selected(only, v.name)) {
      phase_breakdown(v.fn, v.name, 64, 16, 1024);
      phase_breakdown(v.fn, v.name, 128, 128, 4096);
    }
  }
  const char* label = getenv("BENCH_LABEL");
  printf("\n| kernel | b | h_q | s_q | s_k | us | GB/s | TFLOP/s | of copy BW | FlashMLA us | of FlashMLA GB/s | us with schedule |\n");
  printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Variant& v : kVariants) {
    if (!selected(only, v.name)) continue;
    // BENCH_HQ / BENCH_SK, e.g. "16,64" / "1024,4096": only the anchor
    // shapes with those h_q / s_k.
    const char* only_h = getenv("BENCH_HQ");
    const char* only_sk = getenv("BENCH_SK");
    for (const Anchor& a : kAnchors) {
      if (!selected(only_h, std::to_string(a.h).c_str()) || !selected(only_sk, std::to_string(a.sk).c_str())) continue;
      double bytes, flops, us, us_step;
      std::vector<int> lens(a.b, a.sk);
      time_shape(v.fn, a.b, a.h, 1, lens, a.sk >= 16384 ? 10 : 30, &bytes, &flops, &us, &us_step);
      printf("| %s%s | %d | %d | 1 | %d | %.1f | %.0f | %.0f | %.2f | %.1f | %.2f | %.1f |\n", label ? label : "", v.name, a.b, a.h,
             a.sk, us, bytes / us / 1e3, flops / us / 1e6, bytes / us / 1e3 / copy, a.us, a.us / us, us_step);
      fflush(stdout);
    }
    if (quick) continue;
    // Variable length: lengths uniform in [mean/2, 3 mean/2], FlashMLA-like.
    for (int s_q = 1; s_q <= 2; ++s_q)
      for (int h : {64, 128}) {
        std::mt19937 rng(42);
        std::uniform_int_distribution<int> d(2048, 6144);
        std::vector<int> lens(128);
        for (int& l : lens) l = d(rng);
        double bytes, flops, us, us_step;
        time_shape(v.fn, 128, h, s_q, lens, 30, &bytes, &flops, &us, &us_step);
        printf("| %s%s varlen | 128 | %d | %d | mean 4096 | %.1f | %.0f | %.0f | %.2f | | | %.1f |\n", label ? label : "", v.name, h,
               s_q, us, bytes / us / 1e3, flops / us / 1e6, bytes / us / 1e3 / copy, us_step);
        fflush(stdout);
      }
  }
  return 0;
}

// One shape, a few calls: what a profiler (ncu) attaches to.
int run_one(const char* name, int batch, int h_q, int s_k) {
  // The kernels' contract (the Go engine validates it): rows come in whole
  // warps of 16 and at most four 64-row tiles (s_q <= 2).
  if (h_q != 16 && h_q != 32 && h_q != 64 && h_q != 128) {
    fprintf(stderr, "one: h_q must be 16, 32, 64 or 128, got %d\n", h_q);
    return 2;
  }
  g_pool.pages = size_t(2) * batch * cdiv(s_k, MLA_PAGE) + 64;
  CK(cudaMalloc(&g_pool.cache, g_pool.pages * MLA_TILE_BYTES));
  fill_random_bf16<<<4096, 256>>>(g_pool.cache, g_pool.pages * MLA_TILE_BYTES / 2, 12345);
  for (const Variant& v : kVariants) {
    if (!selected(name, v.name)) continue;
    double bytes, flops, us, us_step;
    std::vector<int> lens(batch, s_k);
#ifdef MLA_TRACE
    unsigned long long zero[2][12] = {};
    CK(cudaMemcpyToSymbol(g_mla_trace, zero, sizeof(zero)));
#endif
    time_shape(v.fn, batch, h_q, 1, lens, 3, &bytes, &flops, &us, &us_step);
    printf("one %s b=%d h_q=%d s_k=%d: %.1f us\n", v.name, batch, h_q, s_k, us);
#ifdef MLA_TRACE  // the seesaw kernel's phases, per pair of blocks
    unsigned long long tr[2][12];
    CK(cudaMemcpyFromSymbol(tr, g_mla_trace, sizeof(tr)));
    const char* names[] = {"wait other", "softmax", "PV", "refill", "wait data", "QK", "piece first QK", "", "", "total", "piece Q wait", "piece epilogue"};
    for (int w = 0; w < 2 && tr[w][7] > 0; ++w) {
      printf("trace warpgroup %d, cycles per pair:", w);
      for (int i = 0; i < 12; ++i)
        if (i != 7 && i != 8) printf(" %s %.0f", names[i], double(tr[w][i]) / double(tr[w][7]));
      printf(" (pairs %llu, pieces %llu)\n", tr[w][7], tr[w][8]);
    }
#endif
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) { fprintf(stderr, "usage: %s check | bench [variants] | one variants b h_q s_k\n", argv[0]); return 2; }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  printf("device: %s, %d SMs, L2 %d MB\n", prop.name, g_sms, prop.l2CacheSize >> 20);
  for (const Variant& v : kVariants)
    CK(cudaFuncSetAttribute(v.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, MLA_SMEM_BYTES));
  if (!strcmp(argv[1], "check")) return run_check();
  if (!strcmp(argv[1], "bench")) return run_bench(argc > 2 ? argv[2] : nullptr);
  if (!strcmp(argv[1], "one") && argc == 6) return run_one(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
  return 2;
}
