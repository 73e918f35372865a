/*
 * ABI between the MLA decode kernels (kernels/mla_decode.cu) and their
 * launchers (the Go engine's cgo shim, the benchmark driver). Plain C so cgo
 * can include it; every field is fixed width and the struct is passed to the
 * kernels by value.
 */
#ifndef MLA_DECODE_PARAMS_H
#define MLA_DECODE_PARAMS_H

#include <stdint.h>

#define MLA_HEAD_DIM 576   /* 512 latent + 64 RoPE values per cached token */
#define MLA_LATENT_DIM 512 /* the value width: the first 512 values of a row */
#define MLA_PAGE 64        /* tokens per page, also the kernel's KV block */
#define MLA_TILE_ROWS 64   /* query rows (s_q x h_q, flattened) per CTA */
#define MLA_THREADS 256    /* two warpgroups per CTA */
/* The scheduler charges each sequence this many KV blocks of fixed cost
 * (loading Q, the epilogue, the combine) when it balances the parts. 2
 * measured 5-9% faster than 5 on s_k <= 4096 and the same elsewhere (v7). */
#ifndef MLA_SEQ_OVERHEAD_BLOCKS /* overridable for tuning runs of the benchmark */
#define MLA_SEQ_OVERHEAD_BLOCKS 2
#endif
/* The schedule kernel tries part sizes from the balanced one up to this
 * many minus one units larger, and takes the first that splits no sequence
 * (0: the balanced size always). 8 measured 1.02x on the geometric mean of
 * the anchor shapes, up to 1.15x, and never below 0.986x (v11). */
#ifndef MLA_SCHED_UNSPLIT_SLACK
#define MLA_SCHED_UNSPLIT_SLACK 8
#endif

/* Shared memory of the decode kernel: the Q tile and two KV stages of
 * 64 x 576 bf16 each, the P tile (64 x 64 bf16), row statistics, plus 1 KiB
 * to align the swizzled tiles to 1024 bytes. */
#define MLA_TILE_BYTES (MLA_TILE_ROWS * MLA_HEAD_DIM * 2)
#define MLA_SMEM_BYTES (3 * MLA_TILE_BYTES + 8192 + 1024 + 1024)

/* Scheduler workspace (int32): [0] KV blocks (cost units) per part,
 * [1] partial slots used, [2..3] reserved, then prefix[batch + 1] (cost
 * positions), split_base[batch], part_start[num_parts]. */
#define MLA_SCHED_HEADER 4
#define MLA_SCHED_INTS(batch, parts) (MLA_SCHED_HEADER + 2 * (batch) + 1 + (parts))

typedef struct MlaDecodeParams {
	uint64_t q;           /* bf16 [batch, s_q, h_q, 576] */
	uint64_t cache;       /* bf16 [pages, 64, 576]: one layer */
	uint64_t block_table; /* int32 [batch, max_pages] */
	uint64_t seq_lens;    /* int32 [batch] */
	uint64_t out;         /* bf16 [batch, s_q, h_q, 512] */
	uint64_t lse;         /* fp32 [batch, h_q, s_q] */
	uint64_t sched;       /* int32 [MLA_SCHED_INTS(batch, num_parts)] */
	uint64_t partial_out; /* fp32 [2 * num_parts, s_q * h_q, 512] */
	uint64_t partial_lse; /* fp32 [2 * num_parts, s_q * h_q] */
	int32_t batch;
	int32_t s_q;
	int32_t h_q;
	int32_t max_pages;
	int32_t num_parts; /* grid.x of the decode kernel */
	float scale;       /* softmax scale applied to q.k */
	float scale_log2;  /* scale * log2(e) */
	int32_t kv_row0;   /* the layer's first row in kv_map */
	uint64_t kv_map;   /* CUtensorMap (device memory) over the whole cache as
	                      [rows][576] bf16: 64 x 64 boxes, 128-byte swizzle;
	                      read by mla_decode_seesaw's bulk tensor copies */
} MlaDecodeParams;

/* The tensor map kv_map describes (cuTensorMapEncodeTiled). */
#define MLA_KV_MAP_BYTES 128
#define MLA_KV_MAP_BOX 64

/* Row copies between a host staging buffer (already on the device) and one
 * layer of the paged cache: rows[i] <-> cache[slots[i]]. */
typedef struct MlaRowCopyParams {
	uint64_t cache; /* bf16 [pages * 64, 576]: one layer */
	uint64_t rows;  /* bf16 [count, 576] */
	uint64_t slots; /* int32 [count] */
	int32_t count;
	int32_t reserved;
} MlaRowCopyParams;

#endif /* MLA_DECODE_PARAMS_H */
