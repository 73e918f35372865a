//go:build cuda

package cuda

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"testing"
	"unsafe"

	"github.com/mla-operator/mla-operator/worker/engine"
)

// These tests need a Hopper GPU. Build here with
//   go test -c -tags cuda -o <dir>/cuda.test ./worker/engine/cuda
// and run the binary on the GPU machine (hack/gpu/run.sh does).

func bf16ToF64(v uint16) float64 { return float64(math.Float32frombits(uint32(v) << 16)) }

// f32ToBF16 rounds to nearest even (inputs here are finite).
func f32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	return uint16((u + 0x7FFF + (u>>16)&1) >> 16)
}

// randomBF16 is uniform in [-1, 1] without values near zero: zeros hide
// unwritten outputs and wrong indexing.
func randomBF16(rng *rand.Rand) uint16 {
	v := rng.Float32()*2 - 1
	if math.Abs(float64(v)) < 1e-3 {
		v = 0.5
	}
	return f32ToBF16(v)
}

type decodeCase struct {
	name  string
	heads int
	sq    int
	lens  []int32
	scale float32
}

func (c decodeCase) String() string {
	return fmt.Sprintf("%s/h%d-sq%d-b%d", c.name, c.heads, c.sq, len(c.lens))
}

func decodeCases() []decodeCase {
	rng := rand.New(rand.NewPCG(7, 11))
	batch64 := make([]int32, 64)
	for i := range batch64 {
		batch64[i] = 1 + rng.Int32N(700)
	}
	batch300 := make([]int32, 300)
	for i := range batch300 {
		batch300[i] = 1 + rng.Int32N(200)
	}
	uniform := equalLens(16, 1000)          // part boundaries snap to sequence starts
	deepseek := float32(1 / math.Sqrt(192)) // (qk_nope + qk_rope)^-0.5
	return []decodeCase{
		// One block each, as many sequences as parts: no sequence is split,
		// so the engine skips the combine launch (TestCombineRunsWhereTheScheduleSplits).
		unsplitCase(16, 132),
		unsplitCase(128, 132),
		{"page-edges", 16, 1, []int32{1, 63, 64, 65}, deepseek},
		{"page-edges", 32, 2, []int32{2, 63, 64, 65, 130, 1000}, deepseek},
		{"long-tail", 64, 1, []int32{4097, 1, 300, 2500}, deepseek},
		{"mixed", 128, 1, []int32{1, 64, 65, 777, 2049}, deepseek},
		{"mixed", 128, 2, []int32{2, 63, 129, 1500}, 0.3}, // peaked softmax
		{"one-sequence-many-splits", 64, 2, []int32{9000}, deepseek},
		{"one-sequence-many-splits", 128, 1, []int32{6000}, deepseek},
		{"batch64", 16, 1, batch64, deepseek},
		{"batch64", 64, 2, batch64, deepseek},
		{"batch300", 16, 1, batch300, deepseek},
		{"uniform", 64, 1, uniform, deepseek},
		{"uniform", 128, 2, uniform, deepseek},
	}
}

// reference computes out and lse in float64 from the bf16 inputs.
func reference(c decodeCase, q []uint16, rowsOf func(b, key int) []uint16) ([]float64, []float64) {
	rows := c.sq * c.heads
	out := make([]float64, len(c.lens)*rows*engine.LatentDim)
	lse := make([]float64, len(c.lens)*rows)
	var wg sync.WaitGroup
	work := make(chan [2]int)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for br := range work {
				b, r := br[0], br[1]
				sq, head := r/c.heads, r%c.heads
				limit := int(c.lens[b]) - c.sq + sq // query sq sees keys [0, limit]
				qr := q[(b*rows+r)*engine.RowDim:][:engine.RowDim]
				scores := make([]float64, limit+1)
				m := math.Inf(-1)
				for j := 0; j <= limit; j++ {
					kr := rowsOf(b, j)
					var d float64
					for i := range engine.RowDim {
						d += bf16ToF64(qr[i]) * bf16ToF64(kr[i])
					}
					scores[j] = d * float64(c.scale)
					m = math.Max(m, scores[j])
				}
				o := out[(b*rows+r)*engine.LatentDim:][:engine.LatentDim]
				var l float64
				for j := 0; j <= limit; j++ {
					w := math.Exp(scores[j] - m)
					l += w
					kr := rowsOf(b, j)
					for i := range engine.LatentDim {
						o[i] += w * bf16ToF64(kr[i])
					}
				}
				for i := range o {
					o[i] /= l
				}
				lse[(b*c.heads+head)*c.sq+sq] = m + math.Log(l)
			}
		}()
	}
	for b := range c.lens {
		for r := range rows {
			work <- [2]int{b, r}
		}
	}
	close(work)
	wg.Wait()
	return out, lse
}

var (
	engines   = map[string]*Engine{}
	enginesMu sync.Mutex
)

func engineFor(t *testing.T, kernel string) *Engine {
	t.Helper()
	enginesMu.Lock()
	defer enginesMu.Unlock()
	if e, ok := engines[kernel]; ok {
		return e
	}
	e, err := New(Options{Kernel: kernel})
	if err != nil {
		t.Fatalf("New(%s): %v", kernel, err)
	}
	engines[kernel] = e
	return e
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, e := range engines {
		if err := e.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "closing engine:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// The variants the tests cover; auto only chooses among them
// (TestDecodeFunctionName).
var testKernels = []string{KernelSeesaw, KernelWGMMA, KernelMMA}

func TestDecodeMatchesFloat64Reference(t *testing.T) {
	for _, kernel := range testKernels {
		for i, c := range decodeCases() {
			t.Run(kernel+"/"+c.String(), func(t *testing.T) {
				checkDecode(t, engineFor(t, kernel), c, uint64(100+i))
			})
		}
	}
}

// unsplitCase has one 64-token sequence per part of a card with sms SMs
// (the engine's parts: SMs over query tiles): the schedule puts each in its
// own part.
func unsplitCase(heads, sms int) decodeCase {
	lens := equalLens(max(1, sms/((heads+tileRows-1)/tileRows)), 64)
	return decodeCase{"unsplit", heads, 1, lens, float32(1 / math.Sqrt(192))}
}

// The engine predicts the schedule on the host (splitSlots) to skip the
// combine launch where no sequence is split. The prediction must be the
// schedule kernel's own result: batches of equal and of random lengths,
// the benchmark's shapes, 1 to 132 parts, compared with the workspace's
// part size and slot count.
func TestSplitSlotsMatchesScheduleKernel(t *testing.T) {
	e := engineFor(t, KernelAuto)
	c := e.fn.schedConsts
	if c == nil {
		t.Fatal("the embedded module reports no schedule constants (mla_schedule_constants)")
	}
	type batch struct {
		lens  []int32
		parts int
	}
	batches := []batch{
		{equalLens(64, 1024), 66}, {equalLens(128, 1024), 66}, {equalLens(64, 4096), 66}, {equalLens(128, 4096), 66},
		{equalLens(64, 1024), 132}, {equalLens(128, 32768), 66}, {equalLens(6, 200), 4}, {equalLens(1, 1), 132},
	}
	rng := rand.New(rand.NewPCG(3, 5))
	for range 400 {
		n, parts := 1+rng.IntN(160), 1+rng.IntN(132)
		var lens []int32
		if rng.IntN(2) == 0 {
			lens = equalLens(n, []int{1, 63, 64, 65, 200, 1000, 1024, 4096, 1 + rng.IntN(40000)}[rng.IntN(9)])
		} else {
			lens = make([]int32, n)
			for i := range lens {
				lens[i] = 1 + rng.Int32N(40000)
			}
		}
		batches = append(batches, batch{lens, parts})
	}
	unsplit := 0
	for i, b := range batches {
		wantPer, wantSlots := splitSlots(b.lens, b.parts, *c)
		per, slots, err := scheduleOnDevice(e, b.lens, b.parts)
		if err != nil {
			t.Fatal(err)
		}
		if per != wantPer || slots != wantSlots {
			t.Errorf("batch %d (%d sequences, first %d tokens, %d parts): kernel per %d slots %d, splitSlots per %d slots %d",
				i, len(b.lens), b.lens[0], b.parts, per, slots, wantPer, wantSlots)
		}
		if slots == 0 {
			unsplit++
		}
	}
	if unsplit < 10 || unsplit == len(batches) {
		t.Errorf("%d of %d batches unsplit: the batches do not cover both outcomes", unsplit, len(batches))
	}
}

// scheduleOnDevice runs the schedule kernel alone and reads the part size
// and the slot count from the workspace's header.
func scheduleOnDevice(e *Engine, lens []int32, parts int) (per, slots int, err error) {
	err = e.do(func() error {
		s := &e.scratch
		if err := s.ensure(0, 0, len(lens)*4, 0, 0, schedInts(len(lens), parts)*4, 0, 0); err != nil {
			return err
		}
		e.sched.valid = false // the workspace is overwritten here
		if err := copyIn(s.lens.ptr, unsafe.Pointer(&lens[0]), len(lens)*4); err != nil {
			return err
		}
		p := makeDecodeParams(decodeArgs{lens: s.lens.ptr, sched: s.sched.ptr, batch: len(lens), parts: parts})
		if err := launchDecode(e.fn.schedule, 1, 1, 32, 0, e.stream, &p); err != nil {
			return err
		}
		var header [2]int32
		if err := copyOut(unsafe.Pointer(&header[0]), s.sched.ptr, 8); err != nil {
			return err
		}
		per, slots = int(header[0]), int(header[1])
		return nil
	})
	return per, slots, err
}

// The combine launch is skipped exactly where the schedule splits nothing,
// and the decode is right both ways (checkDecode poisons the outputs).
func TestCombineRunsWhereTheScheduleSplits(t *testing.T) {
	for _, tc := range []struct {
		name    string
		heads   int
		lens    []int32 // nil: one 64-token sequence per part of the card (unsplitCase)
		combine bool
	}{
		{"unsplit", 16, nil, false},
		{"unsplit", 128, nil, false},
		{"one-sequence-many-splits", 128, []int32{6000}, true},
		{"long-tail", 64, []int32{4097, 1, 300, 2500}, true},
	} {
		for _, kernel := range testKernels {
			t.Run(fmt.Sprintf("%s/%s-h%d", kernel, tc.name, tc.heads), func(t *testing.T) {
				e := engineFor(t, kernel)
				c := decodeCase{tc.name, tc.heads, 1, tc.lens, float32(1 / math.Sqrt(192))}
				if tc.lens == nil {
					c = unsplitCase(tc.heads, e.sms) // the parts follow the card's SM count
				}
				checkDecode(t, e, c, 900)
				if e.sched.combine != tc.combine {
					t.Errorf("combine launched: %v, want %v", e.sched.combine, tc.combine)
				}
			})
		}
	}
}

// A step's layers decode the same lengths: the engine schedules once and
// the later calls reuse the schedule; other lengths or head counts (another
// part count) schedule anew.
func TestDecodeReusesScheduleForSameLengths(t *testing.T) {
	deepseek := float32(1 / math.Sqrt(192))
	split := decodeCase{"reuse", 64, 1, []int32{4097, 1, 300, 2500}, deepseek}
	other := decodeCase{"reuse-other-lengths", 64, 1, []int32{4000, 70, 1, 2600}, deepseek}
	moreHeads := decodeCase{"reuse-more-heads", 128, 1, []int32{4097, 1, 300, 2500}, deepseek}
	for _, kernel := range append([]string{KernelAuto}, testKernels...) {
		e := engineFor(t, kernel)
		for i, c := range []decodeCase{split, split, other, split, moreHeads, split, split} {
			t.Run(fmt.Sprintf("%s/%d-%s", kernel, i, c), func(t *testing.T) {
				checkDecode(t, e, c, uint64(500+i))
				parts := max(1, e.sms/((c.sq*c.heads+tileRows-1)/tileRows))
				if !e.sched.matches(e.scratch.generation, parts, c.lens) {
					t.Errorf("after a successful call the engine holds no schedule for its lengths")
				}
			})
		}
	}
}

func checkDecode(t *testing.T, e *Engine, c decodeCase, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	batch, rows := len(c.lens), c.sq*c.heads
	maxPages, used := 0, 0
	for _, n := range c.lens {
		p := (int(n) + engine.PageSize - 1) / engine.PageSize
		maxPages = max(maxPages, p)
		used += p
	}
	// Two layers, the decoded one second, and unused pages: a kernel that
	// ignores the layer or the block table reads the wrong rows.
	shape := engine.CacheShape{Layers: 2, Pages: used + 5}
	const layer = 1
	cacheI, err := e.NewCache(shape)
	if err != nil {
		t.Fatal(err)
	}
	cache := cacheI.(*Cache)
	defer cache.Close()
	for l := range shape.Layers {
		slots := make([]int32, shape.Pages*engine.PageSize)
		rowsData := make([]uint16, len(slots)*engine.RowDim)
		for i := range slots {
			slots[i] = int32(i)
		}
		for i := range rowsData {
			rowsData[i] = randomBF16(rng)
		}
		if err := cache.WriteRows(l, slots, rowsData); err != nil {
			t.Fatal(err)
		}
	}
	perm := rng.Perm(shape.Pages)
	table := make([]int32, batch*maxPages)
	next := 0
	for b, n := range c.lens {
		for k := range (int(n) + engine.PageSize - 1) / engine.PageSize {
			table[b*maxPages+k] = int32(perm[next])
			next++
		}
	}
	// Rows past each sequence's end in its last page are NaN in the decoded
	// layer: the kernels must never let them reach a product (the seesaw
	// kernel's bulk copies read whole pages and clear those rows).
	var tail []int32
	for b, n := range c.lens {
		last := int(table[b*maxPages+(int(n)-1)/engine.PageSize])
		for r := (int(n)-1)%engine.PageSize + 1; r < engine.PageSize; r++ {
			tail = append(tail, int32(last*engine.PageSize+r))
		}
	}
	if len(tail) > 0 {
		nan := make([]uint16, len(tail)*engine.RowDim)
		for i := range nan {
			nan[i] = 0x7FC0
		}
		if err := cache.WriteRows(layer, tail, nan); err != nil {
			t.Fatal(err)
		}
	}
	// The reference reads back through ReadRows, which checks it too.
	host := make([]uint16, shape.Pages*engine.PageSize*engine.RowDim)
	all := make([]int32, shape.Pages*engine.PageSize)
	for i := range all {
		all[i] = int32(i)
	}
	if err := cache.ReadRows(layer, all, host); err != nil {
		t.Fatal(err)
	}
	rowsOf := func(b, key int) []uint16 {
		slot := int(table[b*maxPages+key/engine.PageSize])*engine.PageSize + key%engine.PageSize
		return host[slot*engine.RowDim:][:engine.RowDim]
	}

	q := make([]uint16, batch*rows*engine.RowDim)
	for i := range q {
		q[i] = randomBF16(rng)
	}
	req := &engine.DecodeRequest{
		Layer: layer, Batch: batch, SQ: c.sq, Heads: c.heads, Q: q,
		BlockTable: table, MaxPages: maxPages, SeqLens: c.lens, Scale: c.scale,
		Out: make([]uint16, batch*rows*engine.LatentDim), LSE: make([]float32, batch*rows),
	}
	for i := range req.Out {
		req.Out[i] = 0xFFFF // NaN: every element must be written
	}
	for i := range req.LSE {
		req.LSE[i] = float32(math.NaN())
	}
	if err := e.Decode(context.Background(), cache, req); err != nil {
		t.Fatal(err)
	}
	wantOut, wantLSE := reference(c, q, rowsOf)

	var num, den float64
	nans := 0
	for i, v := range req.Out {
		got := bf16ToF64(v)
		if math.IsNaN(got) {
			nans++
			continue
		}
		num += (got - wantOut[i]) * (got - wantOut[i])
		den += wantOut[i] * wantOut[i]
	}
	if nans > 0 {
		t.Fatalf("%d of %d outputs NaN (unwritten or invalid)", nans, len(req.Out))
	}
	rel := math.Sqrt(num / den)
	var lseErr float64
	for i, v := range req.LSE {
		d := math.Abs(float64(v) - wantLSE[i])
		if math.IsNaN(d) {
			t.Fatalf("lse[%d] = %v, want %v", i, v, wantLSE[i])
		}
		lseErr = math.Max(lseErr, d/math.Max(1, math.Abs(wantLSE[i])))
	}
	t.Logf("relative L2 %.2e, max lse error %.2e", rel, lseErr)
	if rel > 1e-2 {
		t.Errorf("relative L2 error %.3e above 1e-2", rel)
	}
	if lseErr > 1e-3 {
		t.Errorf("lse error %.3e above 1e-3", lseErr)
	}
}

func TestCacheRowsRoundTrip(t *testing.T) {
	e := engineFor(t, DefaultKernel)
	shape := engine.CacheShape{Layers: 3, Pages: 4}
	c, err := e.NewCache(shape)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	slots := []int32{0, 63, 64, 255, 130}
	rows := make([]uint16, len(slots)*engine.RowDim)
	for i := range rows {
		rows[i] = randomBF16(rng)
	}
	if err := c.WriteRows(2, slots, rows); err != nil {
		t.Fatal(err)
	}
	got := make([]uint16, len(rows))
	if err := c.ReadRows(2, slots, got); err != nil {
		t.Fatal(err)
	}
	for i := range rows {
		if got[i] != rows[i] {
			t.Fatalf("value %d: read %#04x, wrote %#04x", i, got[i], rows[i])
		}
	}
	if err := c.WriteRows(3, slots, rows); err == nil {
		t.Error("writing layer 3 of 3 succeeded")
	}
	if err := c.WriteRows(0, []int32{256}, rows[:engine.RowDim]); err == nil {
		t.Error("writing slot 256 of 256 succeeded")
	}
}

func TestDecodeRejectsForeignCacheAndBadRequest(t *testing.T) {
	e := engineFor(t, DefaultKernel)
	c, err := e.NewCache(engine.CacheShape{Layers: 1, Pages: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := &engine.DecodeRequest{Batch: 1, SQ: 1, Heads: 16, MaxPages: 1, BlockTable: []int32{0},
		SeqLens: []int32{65}, Q: make([]uint16, 16*engine.RowDim), Out: make([]uint16, 16*engine.LatentDim),
		LSE: make([]float32, 16), Scale: 0.1}
	if err := e.Decode(context.Background(), c, req); err == nil {
		t.Error("decode of a 65-token sequence over one page succeeded")
	}
	other, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	req.SeqLens[0] = 64
	if err := other.Decode(context.Background(), c, req); err == nil {
		t.Error("decode over another engine's cache succeeded")
	}
}

func TestKernelOptions(t *testing.T) {
	if _, err := New(Options{Kernel: "flash"}); err == nil {
		t.Error("New accepted an unknown kernel")
	}
	if e := engineFor(t, KernelAuto); e.Kernel() != KernelAuto {
		t.Errorf("Kernel() = %s, want %s", e.Kernel(), KernelAuto)
	}
}

func TestRegisteredAsCUDA(t *testing.T) {
	found := false
	for _, n := range engine.Backends() {
		found = found || n == Name
	}
	if !found {
		t.Fatalf("backends %v lack %q", engine.Backends(), Name)
	}
}

// BenchmarkDecode times Engine.Decode end to end through the Go path: host
// to device copies of q, block table and lengths, the decode and combine
// launches (the schedule is reused: the lengths do not change), and the
// copies of out and lse back. hack/gpu/mla_bench.cu times the kernels alone.
func BenchmarkDecode(b *testing.B) {
	for _, bc := range []struct{ batch, heads, seqLen int }{{64, 64, 4096}, {128, 128, 4096}} {
		b.Run(fmt.Sprintf("b%d-h%d-sk%d", bc.batch, bc.heads, bc.seqLen), func(b *testing.B) {
			e, err := New(Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			pagesPer := bc.seqLen / engine.PageSize
			shape := engine.CacheShape{Layers: 1, Pages: bc.batch * pagesPer}
			c, err := e.NewCache(shape)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			rng := rand.New(rand.NewPCG(1, 2))
			const chunk = 4096
			slots := make([]int32, chunk)
			rows := make([]uint16, chunk*engine.RowDim)
			for i := range rows {
				rows[i] = randomBF16(rng)
			}
			for start := 0; start < shape.Pages*engine.PageSize; start += chunk {
				for i := range slots {
					slots[i] = int32(start + i)
				}
				if err := c.WriteRows(0, slots, rows); err != nil {
					b.Fatal(err)
				}
			}
			perm := rng.Perm(shape.Pages)
			table := make([]int32, len(perm))
			for i, p := range perm {
				table[i] = int32(p)
			}
			lens := equalLens(bc.batch, bc.seqLen)
			q := make([]uint16, bc.batch*bc.heads*engine.RowDim)
			for i := range q {
				q[i] = randomBF16(rng)
			}
			req := &engine.DecodeRequest{Batch: bc.batch, SQ: 1, Heads: bc.heads, Q: q, BlockTable: table,
				MaxPages: pagesPer, SeqLens: lens, Scale: 0.07,
				Out: make([]uint16, bc.batch*bc.heads*engine.LatentDim), LSE: make([]float32, bc.batch*bc.heads)}
			ctx := context.Background()
			if err := e.Decode(ctx, c, req); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				if err := e.Decode(ctx, c, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
