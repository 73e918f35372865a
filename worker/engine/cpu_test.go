package engine

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/mla-operator/mla-operator/worker/bf16"
)

// decodeCase builds a random decode problem: a cache whose sequences live
// on shuffled, non-contiguous pages, and queries for each.
type decodeCase struct {
	layers, layer int
	heads, sq     int
	seqLens       []int32
	scale         float32
}

type decodeFixture struct {
	cache Cache
	req   *DecodeRequest
}

// randomBF16 draws values in [-amp, amp), never all zero.
func randomBF16(r *rand.Rand, n int, amp float32) []uint16 {
	out := make([]uint16, n)
	for i := range out {
		out[i] = bf16.FromFloat32((r.Float32()*2 - 1) * amp)
	}
	return out
}

func (c decodeCase) build(t testing.TB, e Engine, r *rand.Rand) decodeFixture {
	t.Helper()
	maxPages := 0
	total := 0
	for _, n := range c.seqLens {
		p := (int(n) + PageSize - 1) / PageSize
		maxPages = max(maxPages, p)
		total += p
	}
	// Spare pages so that tables do not cover the cache exactly.
	pages := total + 3
	cache, err := e.NewCache(CacheShape{Layers: c.layers, Pages: pages})
	if err != nil {
		t.Fatalf("NewCache: %v", err)
	}
	t.Cleanup(func() { cache.Close() })
	perm := r.Perm(pages)
	batch := len(c.seqLens)
	table := make([]int32, batch*maxPages)
	for i := range table {
		table[i] = -1 // unused entries must never be read
	}
	next := 0
	for b, n := range c.seqLens {
		p := (int(n) + PageSize - 1) / PageSize
		slots := make([]int32, 0, p*PageSize)
		for k := range p {
			page := int32(perm[next])
			next++
			table[b*maxPages+k] = page
			for off := range PageSize {
				slots = append(slots, page*PageSize+int32(off))
			}
		}
		// Fill every layer, whole pages, so a kernel that reads past the
		// sequence's length or the wrong layer gets different numbers.
		for l := range c.layers {
			if err := cache.WriteRows(l, slots, randomBF16(r, len(slots)*RowDim, 1)); err != nil {
				t.Fatalf("WriteRows: %v", err)
			}
		}
	}
	req := &DecodeRequest{
		Layer: c.layer, Batch: batch, SQ: c.sq, Heads: c.heads,
		Q:          randomBF16(r, batch*c.sq*c.heads*RowDim, 1),
		BlockTable: table, MaxPages: maxPages, SeqLens: c.seqLens, Scale: c.scale,
		Out: make([]uint16, batch*c.sq*c.heads*LatentDim),
		LSE: make([]float32, batch*c.heads*c.sq),
	}
	return decodeFixture{cache: cache, req: req}
}

// referenceDecode is the contract computed in float64, straight from the
// definition: softmax over all visible keys at once.
func referenceDecode(t testing.TB, cache Cache, req *DecodeRequest) (out []float64, lse []float64) {
	t.Helper()
	out = make([]float64, len(req.Out))
	lse = make([]float64, len(req.LSE))
	row := make([]uint16, RowDim)
	for b := range req.Batch {
		n := int(req.SeqLens[b])
		keys := make([][]float64, n)
		for tok := range n {
			slot := req.BlockTable[b*req.MaxPages+tok/PageSize]*PageSize + int32(tok%PageSize)
			if err := cache.ReadRows(req.Layer, []int32{slot}, row); err != nil {
				t.Fatalf("ReadRows: %v", err)
			}
			keys[tok] = make([]float64, RowDim)
			for d, v := range row {
				keys[tok][d] = float64(bf16.ToFloat32(v))
			}
		}
		for i := range req.SQ {
			visible := n - req.SQ + i + 1
			for h := range req.Heads {
				q := req.Q[((b*req.SQ+i)*req.Heads+h)*RowDim:][:RowDim]
				scores := make([]float64, visible)
				m := math.Inf(-1)
				for tok := range visible {
					var s float64
					for d := range RowDim {
						s += float64(bf16.ToFloat32(q[d])) * keys[tok][d]
					}
					scores[tok] = s * float64(req.Scale)
					m = math.Max(m, scores[tok])
				}
				var sum float64
				o := out[((b*req.SQ+i)*req.Heads+h)*LatentDim:][:LatentDim]
				for tok, s := range scores {
					p := math.Exp(s - m)
					sum += p
					for d := range LatentDim {
						o[d] += p * keys[tok][d]
					}
				}
				for d := range o {
					o[d] /= sum
				}
				lse[(b*req.Heads+h)*req.SQ+i] = m + math.Log(sum)
			}
		}
	}
	return out, lse
}

func poison(req *DecodeRequest) {
	nan := bf16.FromFloat32(float32(math.NaN()))
	for i := range req.Out {
		req.Out[i] = nan
	}
	for i := range req.LSE {
		req.LSE[i] = float32(math.NaN())
	}
}

func checkAgainstReference(t *testing.T, f decodeFixture) {
	t.Helper()
	wantOut, wantLSE := referenceDecode(t, f.cache, f.req)
	bad := 0
	for i, h := range f.req.Out {
		got := float64(bf16.ToFloat32(h))
		// bf16 keeps 8 significant bits: rounding alone costs 2^-9
		// relative; fp32 accumulation adds far less than the absolute slack.
		if tol := 4e-3*math.Abs(wantOut[i]) + 1e-5; math.IsNaN(got) || math.Abs(got-wantOut[i]) > tol {
			if bad++; bad <= 5 {
				t.Errorf("out[%d] = %g, want %g (tolerance %g)", i, got, wantOut[i], tol)
			}
		}
	}
	for i, got := range f.req.LSE {
		if tol := 1e-5*math.Abs(wantLSE[i]) + 1e-4; math.IsNaN(float64(got)) || math.Abs(float64(got)-wantLSE[i]) > tol {
			if bad++; bad <= 10 {
				t.Errorf("lse[%d] = %g, want %g", i, got, wantLSE[i])
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d values differ from the float64 reference", bad, len(f.req.Out)+len(f.req.LSE))
	}
}

func TestCPUDecodeMatchesFloat64Reference(t *testing.T) {
	deepSeekScale := float32(1 / math.Sqrt(192) * math.Pow(0.1*math.Log(40)+1, 2))
	for _, tc := range []struct {
		name string
		decodeCase
		workers int
	}{
		{"single token", decodeCase{layers: 1, heads: 16, sq: 1, seqLens: []int32{1}, scale: deepSeekScale}, 2},
		{"one full page", decodeCase{layers: 2, layer: 1, heads: 16, sq: 1, seqLens: []int32{64}, scale: deepSeekScale}, 2},
		{"ragged lengths across pages", decodeCase{layers: 3, layer: 2, heads: 32, sq: 1,
			seqLens: []int32{1, 63, 65, 130, 200, 7}, scale: deepSeekScale}, 3},
		{"causal two-token queries", decodeCase{layers: 2, layer: 0, heads: 16, sq: 2,
			seqLens: []int32{2, 64, 65, 129}, scale: deepSeekScale}, 4},
		{"128 heads split across workers", decodeCase{layers: 1, heads: 128, sq: 2,
			seqLens: []int32{100}, scale: deepSeekScale}, 8},
		{"sharp softmax", decodeCase{layers: 1, heads: 64, sq: 1, seqLens: []int32{300, 45}, scale: 2}, 2},
		{"flat softmax", decodeCase{layers: 1, heads: 16, sq: 2, seqLens: []int32{190}, scale: 1e-3}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := NewCPU(tc.workers)
			f := tc.build(t, e, rand.New(rand.NewPCG(uint64(len(tc.name)), 7)))
			poison(f.req)
			if err := e.Decode(context.Background(), f.cache, f.req); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			checkAgainstReference(t, f)
		})
	}
}

func TestCPUDecodeCausalMaskHidesFutureKey(t *testing.T) {
	// With s_q = 2 the first query must not see the last key: making that
	// key dominate must change only the second query's output.
	e := NewCPU(2)
	c := decodeCase{layers: 1, heads: 16, sq: 2, seqLens: []int32{10}, scale: 0.1}
	f := c.build(t, e, rand.New(rand.NewPCG(3, 4)))
	if err := e.Decode(context.Background(), f.cache, f.req); err != nil {
		t.Fatal(err)
	}
	before := append([]uint16(nil), f.req.Out...)
	last := f.req.BlockTable[0]*PageSize + 9
	huge := make([]uint16, RowDim)
	for d := range huge {
		huge[d] = bf16.FromFloat32(50)
	}
	if err := f.cache.WriteRows(0, []int32{last}, huge); err != nil {
		t.Fatal(err)
	}
	if err := e.Decode(context.Background(), f.cache, f.req); err != nil {
		t.Fatal(err)
	}
	perQuery := c.heads * LatentDim
	changedFirst, changedSecond := false, false
	for i := range f.req.Out {
		if f.req.Out[i] != before[i] {
			if i < perQuery {
				changedFirst = true
			} else {
				changedSecond = true
			}
		}
	}
	if changedFirst {
		t.Error("first query's output changed when only a key it must not see changed")
	}
	if !changedSecond {
		t.Error("second query's output did not change when the key it sees changed")
	}
}

func TestCPUDecodeRejectsBadRequests(t *testing.T) {
	e := NewCPU(2)
	good := func(t *testing.T) decodeFixture {
		c := decodeCase{layers: 2, heads: 16, sq: 1, seqLens: []int32{70}, scale: 0.1}
		return c.build(t, e, rand.New(rand.NewPCG(5, 6)))
	}
	for _, tc := range []struct {
		name   string
		mutate func(*decodeFixture)
		want   string
	}{
		{"layer out of range", func(f *decodeFixture) { f.req.Layer = 2 }, "layer 2 out of range"},
		{"page outside cache", func(f *decodeFixture) { f.req.BlockTable[1] = 1 << 20 }, "outside"},
		{"length beyond table", func(f *decodeFixture) { f.req.SeqLens[0] = 129 }, "needs 3 pages"},
		{"zero scale", func(f *decodeFixture) { f.req.Scale = 0 }, "scale"},
		{"NaN scale", func(f *decodeFixture) { f.req.Scale = float32(math.NaN()) }, "scale"},
		{"short output", func(f *decodeFixture) { f.req.Out = f.req.Out[:10] }, "out has 10 values"},
		{"foreign cache", func(f *decodeFixture) { f.cache = foreignCache{f.cache} }, "not made by this engine"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := good(t)
			tc.mutate(&f)
			err := e.Decode(context.Background(), f.cache, f.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

type foreignCache struct{ Cache }

func TestCPUDecodeHonoursCancellation(t *testing.T) {
	e := NewCPU(1)
	c := decodeCase{layers: 1, heads: 16, sq: 1, seqLens: []int32{5, 5}, scale: 0.1}
	f := c.build(t, e, rand.New(rand.NewPCG(1, 1)))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.Decode(ctx, f.cache, f.req); !errors.Is(err, context.Canceled) {
		t.Fatalf("Decode with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestHostCacheRoundTripAndBounds(t *testing.T) {
	c, err := newHostCache(CacheShape{Layers: 3, Pages: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := rand.New(rand.NewPCG(9, 9))
	slots := []int32{0, 255, 64, 17}
	rows := randomBF16(r, len(slots)*RowDim, 3)
	if err := c.WriteRows(2, slots, rows); err != nil {
		t.Fatal(err)
	}
	got := make([]uint16, len(rows))
	if err := c.ReadRows(2, slots, got); err != nil {
		t.Fatal(err)
	}
	for i := range rows {
		if got[i] != rows[i] {
			t.Fatalf("value %d read back as %#x, wrote %#x", i, got[i], rows[i])
		}
	}
	// Another layer's same slots are untouched.
	if err := c.ReadRows(1, slots, got); err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if v != 0 {
			t.Fatalf("layer 1 value %d is %#x after writing layer 2", i, v)
		}
	}
	for _, tc := range []struct {
		layer int
		slots []int32
		rows  int
		want  string
	}{
		{3, []int32{0}, RowDim, "layer 3 out of range"},
		{0, []int32{256}, RowDim, "slot 256 out of range"},
		{0, []int32{-1}, RowDim, "slot -1 out of range"},
		{0, []int32{0, 1}, RowDim, "need 1152 values"},
	} {
		if err := c.WriteRows(tc.layer, tc.slots, make([]uint16, tc.rows)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("WriteRows(%d, %v) = %v, want %q", tc.layer, tc.slots, err, tc.want)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteRows(0, []int32{0}, make([]uint16, RowDim)); err == nil {
		t.Error("WriteRows after Close succeeded")
	}
}

func TestHostCacheIsSparse(t *testing.T) {
	// A cache the size of an 80 GB GPU's pool maps on a machine with less
	// memory and costs only what is touched.
	shape := CacheShape{Layers: 61, Pages: 1000} // 61 x 1000 x 64 x 1152 B = 4.5 GB; scaled below
	shape.Pages = int((80 << 30) / (int64(shape.Layers) * PageSize * RowDim * 2))
	c, err := newHostCache(shape)
	if err != nil {
		t.Fatalf("mapping %d GiB: %v", shape.Bytes()>>30, err)
	}
	defer c.Close()
	last := int32(shape.Pages*PageSize - 1)
	row := randomBF16(rand.New(rand.NewPCG(1, 2)), RowDim, 1)
	if err := c.WriteRows(shape.Layers-1, []int32{last}, row); err != nil {
		t.Fatal(err)
	}
	got := make([]uint16, RowDim)
	if err := c.ReadRows(shape.Layers-1, []int32{last}, got); err != nil {
		t.Fatal(err)
	}
	if got[0] != row[0] || got[RowDim-1] != row[RowDim-1] {
		t.Fatal("last row of an 80 GiB cache did not read back")
	}
}

func TestRegistryHasCPU(t *testing.T) {
	e, err := New(CPUBackend, 0)
	if err != nil {
		t.Fatal(err)
	}
	if e.Name() != CPUBackend {
		t.Fatalf("backend %q reports name %q", CPUBackend, e.Name())
	}
}
