//go:build cuda

package app

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/mla-operator/mla-operator/worker/bf16"
	"github.com/mla-operator/mla-operator/worker/engine"
)

// TestCUDAEngineIgnoresRowsPastTheLength decodes one sequence per length on
// the CUDA and CPU engines over identical caches whose pages are full; then
// it overwrites the GPU cache's rows past each sequence's length with large
// values. A kernel that reads past the length changes its answer.
func TestCUDAEngineIgnoresRowsPastTheLength(t *testing.T) {
	gpuEng, err := engine.New("cuda", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer gpuEng.Close()
	cpuEng := engine.NewCPU(0)
	ctx := context.Background()
	for _, heads := range []int{16, 128} {
		for _, n := range []int{1, 2, 31, 63, 64, 65, 127, 129, 700, 3001} {
			t.Run(fmt.Sprintf("heads=%d/len=%d", heads, n), func(t *testing.T) {
				r := rand.New(rand.NewPCG(uint64(n), uint64(heads)))
				pages := (n + 63) / 64
				shape := engine.CacheShape{Layers: 1, Pages: pages + 1}
				gc, err := gpuEng.NewCache(shape)
				if err != nil {
					t.Fatal(err)
				}
				defer gc.Close()
				cc, err := cpuEng.NewCache(shape)
				if err != nil {
					t.Fatal(err)
				}
				defer cc.Close()
				table := make([]int32, pages)
				slots := make([]int32, 0, pages*64)
				for p := range pages {
					table[p] = int32(pages - p) // reversed, skipping page 0
					for o := range 64 {
						slots = append(slots, table[p]*64+int32(o))
					}
				}
				rows := make([]uint16, len(slots)*engine.RowDim)
				for i := range rows {
					rows[i] = bf16.FromFloat32(r.Float32()*2 - 1)
				}
				for _, c := range []engine.Cache{gc, cc} {
					if err := c.WriteRows(0, slots, rows); err != nil {
						t.Fatal(err)
					}
				}
				q := make([]uint16, heads*engine.RowDim)
				for i := range q {
					q[i] = bf16.FromFloat32(r.Float32()*2 - 1)
				}
				decode := func(e engine.Engine, c engine.Cache) ([]uint16, []float32) {
					req := &engine.DecodeRequest{Layer: 0, Batch: 1, SQ: 1, Heads: heads, Q: q, BlockTable: table,
						MaxPages: pages, SeqLens: []int32{int32(n)}, Scale: 0.0721,
						Out: make([]uint16, heads*engine.LatentDim), LSE: make([]float32, heads)}
					if err := e.Decode(ctx, c, req); err != nil {
						t.Fatal(err)
					}
					return req.Out, req.LSE
				}
				wantOut, wantLSE := decode(cpuEng, cc)
				compare := func(stage string) {
					out, lse := decode(gpuEng, gc)
					worstRMS, worstMax, worstLSE := 0.0, 0.0, 0.0
					for h := range heads {
						i := h * engine.LatentDim
						rms, mx := rowError(out[i:i+engine.LatentDim], wantOut[i:i+engine.LatentDim])
						worstRMS, worstMax = math.Max(worstRMS, rms), math.Max(worstMax, mx)
					}
					for i := range lse {
						worstLSE = math.Max(worstLSE, math.Abs(float64(lse[i]-wantLSE[i])))
					}
					t.Logf("%s: worst head: relative RMS error %.2g, relative max error %.2g; max |lse gpu - cpu| %.2g",
						stage, worstRMS, worstMax, worstLSE)
					if worstRMS > maxRelRMS || worstMax > maxRelMax || !(worstLSE <= 1e-3) {
						t.Errorf("%s: GPU differs from the CPU engine beyond bf16 rounding", stage)
					}
				}
				compare("full pages")
				if tail := pages*64 - n; tail > 0 {
					poison := make([]uint16, tail*engine.RowDim)
					for i := range poison {
						poison[i] = bf16.FromFloat32(30)
					}
					if err := gc.WriteRows(0, slots[n:], poison); err != nil {
						t.Fatal(err)
					}
					compare("rows past the length poisoned")
				}
			})
		}
	}
}

// rowError compares two bf16 rows (one head's output) the way an
// attention output is judged: the RMS of the difference relative to the RMS
// of the reference, and the largest difference relative to the reference's
// largest value. Per-value ULPs would flag cancellation near zero: a GPU
// kernel that rounds softmax probabilities to bf16 before the PV product (as
// FlashMLA does) differs from fp32 probabilities by about 2^-9 of the row's
// scale, not of each value.
func rowError(got, want []uint16) (relRMS, relMax float64) {
	var diff2, ref2, maxDiff, maxRef float64
	for i := range want {
		w := float64(bf16.ToFloat32(want[i]))
		d := float64(bf16.ToFloat32(got[i])) - w
		if math.IsNaN(d) {
			return math.Inf(1), math.Inf(1)
		}
		diff2 += d * d
		ref2 += w * w
		maxDiff = math.Max(maxDiff, math.Abs(d))
		maxRef = math.Max(maxRef, math.Abs(w))
	}
	if ref2 == 0 {
		return math.Sqrt(diff2), maxDiff
	}
	return math.Sqrt(diff2 / ref2), maxDiff / maxRef
}

// Tolerances for GPU against CPU, per head row.
const (
	maxRelRMS = 1e-2
	maxRelMax = 2e-2
)

// TestCUDAEngineBatchMatchesCPUPerSequence decodes a batch of ragged
// sequences on both engines and reports, per sequence, the largest
// difference in bf16 ULPs of the CPU value. tailsWritten=false leaves the
// rows past each length as the allocator left them on the GPU (the API's
// situation) and zero on the CPU.
func TestCUDAEngineBatchMatchesCPUPerSequence(t *testing.T) {
	gpuEng, err := engine.New("cuda", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer gpuEng.Close()
	cpuEng := engine.NewCPU(0)
	ctx := context.Background()
	lens := []int{1, 63, 64, 65, 700, 2048, 3001, 129}
	for _, tailsWritten := range []bool{true, false} {
		for _, heads := range []int{16, 128} {
			t.Run(fmt.Sprintf("tails=%v/heads=%d", tailsWritten, heads), func(t *testing.T) {
				r := rand.New(rand.NewPCG(5, uint64(heads)))
				maxPages, total := 0, 0
				for _, n := range lens {
					maxPages = max(maxPages, (n+63)/64)
					total += (n + 63) / 64
				}
				shape := engine.CacheShape{Layers: 2, Pages: total + 2}
				gc, err := gpuEng.NewCache(shape)
				if err != nil {
					t.Fatal(err)
				}
				defer gc.Close()
				cc, err := cpuEng.NewCache(shape)
				if err != nil {
					t.Fatal(err)
				}
				defer cc.Close()
				table := make([]int32, len(lens)*maxPages)
				next := int32(0)
				for b, n := range lens {
					var slots []int32
					for p := range (n + 63) / 64 {
						table[b*maxPages+p] = next
						for o := range 64 {
							if tailsWritten || p*64+o < n {
								slots = append(slots, next*64+int32(o))
							}
						}
						next++
					}
					rows := make([]uint16, len(slots)*engine.RowDim)
					for i := range rows {
						rows[i] = bf16.FromFloat32(r.Float32()*2 - 1)
					}
					for _, c := range []engine.Cache{gc, cc} {
						if err := c.WriteRows(1, slots, rows); err != nil {
							t.Fatal(err)
						}
					}
				}
				q := make([]uint16, len(lens)*heads*engine.RowDim)
				for i := range q {
					q[i] = bf16.FromFloat32(r.Float32()*2 - 1)
				}
				seqLens := make([]int32, len(lens))
				for i, n := range lens {
					seqLens[i] = int32(n)
				}
				decode := func(e engine.Engine, c engine.Cache) ([]uint16, []float32) {
					req := &engine.DecodeRequest{Layer: 1, Batch: len(lens), SQ: 1, Heads: heads, Q: q, BlockTable: table,
						MaxPages: maxPages, SeqLens: seqLens, Scale: 0.0721,
						Out: make([]uint16, len(lens)*heads*engine.LatentDim), LSE: make([]float32, len(lens)*heads)}
					if err := e.Decode(ctx, c, req); err != nil {
						t.Fatal(err)
					}
					return req.Out, req.LSE
				}
				want, _ := decode(cpuEng, cc)
				got, _ := decode(gpuEng, gc)
				for b, n := range lens {
					worstRMS, worstMax := 0.0, 0.0
					for h := range heads {
						i := (b*heads + h) * engine.LatentDim
						rms, mx := rowError(got[i:i+engine.LatentDim], want[i:i+engine.LatentDim])
						worstRMS, worstMax = math.Max(worstRMS, rms), math.Max(worstMax, mx)
					}
					t.Logf("sequence %d (len %d): worst head: relative RMS error %.2g, relative max error %.2g", b, n, worstRMS, worstMax)
					if worstRMS > maxRelRMS || worstMax > maxRelMax {
						t.Errorf("sequence %d (len %d) differs from the CPU engine beyond bf16 rounding", b, n)
					}
				}
			})
		}
	}
}
