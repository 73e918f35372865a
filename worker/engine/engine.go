// Package engine defines MLA decode attention over a paged latent KV cache,
// with interchangeable backends (the pure-Go CPU reference here, the CUDA
// kernel behind the cuda build tag).
//
// The contract is FlashMLA's dense decode:
//
//	q          bf16  [batch, sQ, heads, 576]   (512 latent + 64 RoPE)
//	cache      bf16  [layer][page][64][576]    (one latent KV head; the first
//	                                            512 values of a row are V)
//	blockTable int32 [batch, maxPages]         (pages of each sequence, shared
//	                                            by all layers)
//	seqLens    int32 [batch]                   (>= 1, may end mid-page)
//	out        bf16  [batch, sQ, heads, 512]
//	lse        fp32  [batch, heads, sQ]        (natural log of the softmax
//	                                            denominator of scaled scores)
//
// With sQ > 1 the queries are the last sQ tokens of each sequence and attend
// causally: query i of sequence b sees keys [0, seqLen[b] - sQ + i].
package engine

import (
	"context"
	"fmt"
)

// Fixed dimensions of the latent cache row.
const (
	LatentDim = 512                 // kv_lora_rank: also the value width
	RopeDim   = 64                  // qk_rope_head_dim
	RowDim    = LatentDim + RopeDim // 576 values per token and layer
	PageSize  = 64                  // tokens per page
)

// CacheShape is the size of a paged latent cache.
type CacheShape struct {
	Layers int
	Pages  int // pages per layer
}

// Bytes is the cache's size in bf16.
func (s CacheShape) Bytes() int64 {
	return int64(s.Layers) * int64(s.Pages) * PageSize * RowDim * 2
}

// Cache is KV storage owned by a backend (host memory for the CPU engine,
// device memory for CUDA).
type Cache interface {
	Shape() CacheShape
	// WriteRows stores rows (bf16 bits, len = len(slots) x RowDim) into
	// layer's slots; slot = page x PageSize + offset within the page.
	WriteRows(layer int, slots []int32, rows []uint16) error
	// ReadRows is WriteRows' inverse, for checks and migration.
	ReadRows(layer int, slots []int32, rows []uint16) error
	// Close frees the storage.
	Close() error
}

// DecodeRequest is one batched decode step of one layer.
type DecodeRequest struct {
	Layer      int
	Batch      int
	SQ         int      // query tokens per sequence: 1 or 2
	Heads      int      // query heads sharing the latent head: 16, 32, 64 or 128
	Q          []uint16 // bf16 bits, [Batch, SQ, Heads, RowDim]
	BlockTable []int32  // [Batch, MaxPages]
	MaxPages   int
	SeqLens    []int32 // [Batch]
	// Scale multiplies QK^T before the softmax. DeepSeek's is
	// (qk_nope + qk_rope)^-0.5 x mscale^2, not 576^-0.5.
	Scale float32
	// Out receives bf16 bits, [Batch, SQ, Heads, LatentDim].
	Out []uint16
	// LSE receives [Batch, Heads, SQ].
	LSE []float32
}

// Validate checks shapes and lengths against cache; a backend calls it
// before touching memory.
func (r *DecodeRequest) Validate(shape CacheShape) error {
	switch {
	case r.Layer < 0 || r.Layer >= shape.Layers:
		return fmt.Errorf("layer %d out of range [0, %d)", r.Layer, shape.Layers)
	case r.Batch < 1:
		return fmt.Errorf("batch must be at least 1, got %d", r.Batch)
	case r.SQ < 1 || r.SQ > 2:
		return fmt.Errorf("s_q must be 1 or 2, got %d", r.SQ)
	case r.Heads != 16 && r.Heads != 32 && r.Heads != 64 && r.Heads != 128:
		return fmt.Errorf("heads must be 16, 32, 64 or 128, got %d", r.Heads)
	case r.MaxPages < 1:
		return fmt.Errorf("max pages must be at least 1, got %d", r.MaxPages)
	case len(r.Q) != r.Batch*r.SQ*r.Heads*RowDim:
		return fmt.Errorf("q has %d values, want %d", len(r.Q), r.Batch*r.SQ*r.Heads*RowDim)
	case len(r.BlockTable) != r.Batch*r.MaxPages:
		return fmt.Errorf("block table has %d entries, want %d", len(r.BlockTable), r.Batch*r.MaxPages)
	case len(r.SeqLens) != r.Batch:
		return fmt.Errorf("seq lens has %d entries, want %d", len(r.SeqLens), r.Batch)
	case len(r.Out) != r.Batch*r.SQ*r.Heads*LatentDim:
		return fmt.Errorf("out has %d values, want %d", len(r.Out), r.Batch*r.SQ*r.Heads*LatentDim)
	case len(r.LSE) != r.Batch*r.Heads*r.SQ:
		return fmt.Errorf("lse has %d values, want %d", len(r.LSE), r.Batch*r.Heads*r.SQ)
	}
	for b, n := range r.SeqLens {
		if n < int32(r.SQ) {
			return fmt.Errorf("sequence %d has length %d, shorter than s_q %d", b, n, r.SQ)
		}
		pages := (int(n) + PageSize - 1) / PageSize
		if pages > r.MaxPages {
			return fmt.Errorf("sequence %d of length %d needs %d pages, block table has %d", b, n, pages, r.MaxPages)
		}
		for _, p := range r.BlockTable[b*r.MaxPages : b*r.MaxPages+pages] {
			if p < 0 || int(p) >= shape.Pages {
				return fmt.Errorf("sequence %d refers to page %d outside [0, %d)", b, p, shape.Pages)
			}
		}
	}
	return nil
}

// Engine runs decode attention. Implementations are safe for concurrent
// use by many goroutines.
type Engine interface {
	// Name is "cpu" or "cuda".
	Name() string
	// NewCache allocates a cache; the engine decodes only over caches it
	// made.
	NewCache(shape CacheShape) (Cache, error)
	// Decode runs one step of one layer over cache.
	Decode(ctx context.Context, cache Cache, req *DecodeRequest) error
	// Close releases the engine.
	Close() error
}
