package engine

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/mla-operator/mla-operator/worker/bf16"
)

// CPUBackend is the name the CPU reference backend registers under.
const CPUBackend = "cpu"

func init() {
	Register(CPUBackend, func(int) (Engine, error) { return NewCPU(0), nil })
}

// CPU is the reference backend: pure Go, fp32 accumulation, work split
// across sequences and groups of heads. It is what the CUDA kernel is
// checked against and what a worker without a GPU serves with.
type CPU struct {
	workers int
	scratch sync.Pool // *cpuScratch
}

// NewCPU makes a CPU engine that runs up to workers goroutines per decode
// step; 0 means GOMAXPROCS.
func NewCPU(workers int) *CPU {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	return &CPU{workers: workers}
}

// Name is "cpu".
func (e *CPU) Name() string { return CPUBackend }

// NewCache maps a host cache of shape; see hostCache.
func (e *CPU) NewCache(shape CacheShape) (Cache, error) { return newHostCache(shape) }

// Close has nothing to release: caches are closed by their owners.
func (e *CPU) Close() error { return nil }

// minHeadsPerUnit bounds how finely heads are split: each unit widens the
// sequence's keys from bf16 again, so tiny groups waste that work.
const minHeadsPerUnit = 8

// cpuScratch is one goroutine's working memory for a unit of work.
type cpuScratch struct {
	q      []float32 // [queries, RowDim], widened queries
	keys   []float32 // [PageSize, RowDim], one page widened
	scores []float32 // [4, PageSize]: scores, then probabilities, of four heads
	acc    []float32 // [queries, LatentDim], unnormalised output
	max    []float32 // [queries], running max of scores
	sum    []float32 // [queries], running softmax denominator relative to max
}

func (s *cpuScratch) fit(queries int) {
	if cap(s.q) < queries*RowDim {
		s.q = make([]float32, queries*RowDim)
		s.acc = make([]float32, queries*LatentDim)
		s.max = make([]float32, queries)
		s.sum = make([]float32, queries)
	}
	if s.keys == nil {
		s.keys = make([]float32, PageSize*RowDim)
		s.scores = make([]float32, 4*PageSize)
	}
	s.q, s.acc, s.max, s.sum = s.q[:queries*RowDim], s.acc[:queries*LatentDim], s.max[:queries], s.sum[:queries]
}

// Decode runs one decode step of one layer; see the package comment for the
// semantics.
func (e *CPU) Decode(ctx context.Context, cache Cache, req *DecodeRequest) error {
	hc, ok := cache.(*hostCache)
	if !ok {
		return fmt.Errorf("cpu engine: cache %T was not made by this engine", cache)
	}
	if hc.closed.Load() {
		return fmt.Errorf("cpu engine: cache is closed")
	}
	if err := req.Validate(hc.shape); err != nil {
		return fmt.Errorf("cpu engine: %w", err)
	}
	if s := float64(req.Scale); math.IsNaN(s) || math.IsInf(s, 0) || s <= 0 {
		return fmt.Errorf("cpu engine: softmax scale must be positive and finite, got %g", req.Scale)
	}

	// Split heads until there are enough units to keep every worker busy.
	group := req.Heads
	for req.Batch*(req.Heads/group) < 2*e.workers && group/2 >= minHeadsPerUnit {
		group /= 2
	}
	groups := req.Heads / group
	units := req.Batch * groups

	var next atomic.Int64
	workers := min(e.workers, units)
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, _ := e.scratch.Get().(*cpuScratch)
			if s == nil {
				s = new(cpuScratch)
			}
			defer e.scratch.Put(s)
			for {
				u := int(next.Add(1) - 1)
				if u >= units {
					return
				}
				if err := ctx.Err(); err != nil {
					errs[w] = fmt.Errorf("cpu engine: %w", err)
					return
				}
				b, g := u/groups, u%groups
				e.unit(hc, req, s, b, g*group, group)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// unit computes heads [h0, h0+nh) of sequence b with an online softmax over
// the sequence's pages, so each page is widened to fp32 once for all those
// heads and queries.
func (e *CPU) unit(c *hostCache, req *DecodeRequest, s *cpuScratch, b, h0, nh int) {
	sq := req.SQ
	queries := sq * nh
	s.fit(queries)
	// Query index qi = i*nh + (h-h0) for query token i and head h.
	for i := range sq {
		for h := range nh {
			src := req.Q[((b*sq+i)*req.Heads+h0+h)*RowDim:][:RowDim]
			bf16.ToFloat32s(s.q[(i*nh+h)*RowDim:][:RowDim], src)
		}
	}
	for qi := range queries {
		s.max[qi] = float32(math.Inf(-1))
		s.sum[qi] = 0
	}
	clear(s.acc)

	n := int(req.SeqLens[b])
	scale := req.Scale
	table := req.BlockTable[b*req.MaxPages:]
	for t0 := 0; t0 < n; t0 += PageSize {
		count := min(PageSize, n-t0)
		page := table[t0/PageSize]
		for j := range count {
			bf16.ToFloat32s(s.keys[j*RowDim:][:RowDim], c.row(req.Layer, page*PageSize+int32(j)))
		}
		for i := range sq {
			// Query i sees keys [0, n-sq+i]; within this page, the first
			// visible ones.
			visible := min(count, n-sq+i+1-t0)
			if visible <= 0 {
				continue
			}
			// Heads go four at a time so each key value loaded from memory
			// serves four multiply-adds (nh is a multiple of 8).
			scores := s.scores[:4*PageSize]
			for h := 0; h < nh; h += 4 {
				qi := i*nh + h
				q := s.q[qi*RowDim:][:4*RowDim]
				var pageMax [4]float32
				for k := range pageMax {
					pageMax[k] = float32(math.Inf(-1))
				}
				for j := range visible {
					d0, d1, d2, d3 := dot4(q, s.keys[j*RowDim:][:RowDim])
					d0, d1, d2, d3 = scale*d0, scale*d1, scale*d2, scale*d3
					scores[j], scores[PageSize+j], scores[2*PageSize+j], scores[3*PageSize+j] = d0, d1, d2, d3
					pageMax[0], pageMax[1], pageMax[2], pageMax[3] = max(pageMax[0], d0), max(pageMax[1], d1), max(pageMax[2], d2), max(pageMax[3], d3)
				}
				for k := range 4 {
					if m := s.max[qi+k]; pageMax[k] > m {
						// Rescale what was accumulated under the old max.
						alpha := float32(math.Exp(float64(m - pageMax[k])))
						s.sum[qi+k] *= alpha
						scaleInPlace(s.acc[(qi+k)*LatentDim:][:LatentDim], alpha)
						s.max[qi+k] = pageMax[k]
					}
					m, sum := s.max[qi+k], s.sum[qi+k]
					for j, v := range scores[k*PageSize : k*PageSize+visible] {
						p := float32(math.Exp(float64(v - m)))
						scores[k*PageSize+j] = p
						sum += p
					}
					s.sum[qi+k] = sum
				}
				acc := s.acc[qi*LatentDim:][:4*LatentDim]
				for j := range visible {
					axpy4(acc, scores[j], scores[PageSize+j], scores[2*PageSize+j], scores[3*PageSize+j], s.keys[j*RowDim:][:LatentDim])
				}
			}
		}
	}

	for i := range sq {
		for h := range nh {
			qi := i*nh + h
			inv := 1 / s.sum[qi]
			out := req.Out[((b*sq+i)*req.Heads+h0+h)*LatentDim:][:LatentDim]
			for d, v := range s.acc[qi*LatentDim:][:LatentDim] {
				out[d] = bf16.FromFloat32(v * inv)
			}
			req.LSE[(b*req.Heads+h0+h)*sq+i] = s.max[qi] + float32(math.Log(float64(s.sum[qi])))
		}
	}
}

// dot is an fp32 dot product with four independent accumulators, which
// lets the compiler overlap the multiply-adds.
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// dot4 is the dot products of four consecutive RowDim-wide queries in q
// with k, loading each value of k once.
func dot4(q, k []float32) (float32, float32, float32, float32) {
	q0, q1, q2, q3 := q[:RowDim], q[RowDim:2*RowDim], q[2*RowDim:3*RowDim], q[3*RowDim:4*RowDim]
	k = k[:RowDim]
	var s0, s1, s2, s3, t0, t1, t2, t3 float32
	for d := 0; d < RowDim; d += 2 {
		a, b := k[d], k[d+1]
		s0 += q0[d] * a
		s1 += q1[d] * a
		s2 += q2[d] * a
		s3 += q3[d] * a
		t0 += q0[d+1] * b
		t1 += q1[d+1] * b
		t2 += q2[d+1] * b
		t3 += q3[d+1] * b
	}
	return s0 + t0, s1 + t1, s2 + t2, s3 + t3
}

// axpy4 adds p_k * v to the k-th of four consecutive LatentDim-wide rows of
// acc, loading each value of v once.
func axpy4(acc []float32, p0, p1, p2, p3 float32, v []float32) {
	a0, a1, a2, a3 := acc[:LatentDim], acc[LatentDim:2*LatentDim], acc[2*LatentDim:3*LatentDim], acc[3*LatentDim:4*LatentDim]
	v = v[:LatentDim]
	for d, x := range v {
		a0[d] += p0 * x
		a1[d] += p1 * x
		a2[d] += p2 * x
		a3[d] += p3 * x
	}
}

// axpy adds a*x to y.
func axpy(y []float32, a float32, x []float32) {
	x = x[:len(y)]
	i := 0
	for ; i+4 <= len(y); i += 4 {
		y[i] += a * x[i]
		y[i+1] += a * x[i+1]
		y[i+2] += a * x[i+2]
		y[i+3] += a * x[i+3]
	}
	for ; i < len(y); i++ {
		y[i] += a * x[i]
	}
}

func scaleInPlace(y []float32, a float32) {
	for i := range y {
		y[i] *= a
	}
}
