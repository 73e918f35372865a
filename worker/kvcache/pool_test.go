package kvcache

import (
	"context"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/mla-operator/mla-operator/worker/bf16"
	"github.com/mla-operator/mla-operator/worker/engine"
)

func newTestPool(t testing.TB, layers, pages int, contextLimit int64) *Pool {
	t.Helper()
	cache, err := engine.NewCPU(2).NewCache(engine.CacheShape{Layers: layers, Pages: pages})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cache.Close() })
	p, err := New(cache, contextLimit)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func randomRows(r *rand.Rand, tokens int) []uint16 {
	rows := make([]uint16, tokens*engine.RowDim)
	for i := range rows {
		rows[i] = bf16.FromFloat32(r.Float32()*2 - 1)
	}
	return rows
}

// checkInvariants verifies the accounting against the sequences themselves.
func checkInvariants(t *testing.T, p *Pool) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	reserved, taken := 0, 0
	seen := map[int32]bool{}
	for _, s := range p.seqs {
		reserved += s.reservedPages
		s.mu.Lock()
		taken += len(s.table)
		if len(s.table) > s.reservedPages {
			t.Errorf("sequence %d took %d pages, reserved %d", s.id, len(s.table), s.reservedPages)
		}
		for _, pg := range s.table {
			if seen[pg] {
				t.Errorf("page %d held twice", pg)
			}
			seen[pg] = true
		}
		s.mu.Unlock()
	}
	for _, pg := range p.free {
		if seen[pg] {
			t.Errorf("page %d both free and held", pg)
		}
		seen[pg] = true
	}
	if len(seen) != p.pages {
		t.Errorf("%d distinct pages accounted for, pool has %d", len(seen), p.pages)
	}
	if reserved != p.reserved {
		t.Errorf("pool says %d reserved pages, sequences hold %d", p.reserved, reserved)
	}
	if taken+len(p.free) != p.pages {
		t.Errorf("%d taken + %d free != %d pages", taken, len(p.free), p.pages)
	}
}

func TestAdmissionReservesUpFront(t *testing.T) {
	p := newTestPool(t, 2, 10, 640) // 640 tokens in all
	a, err := p.Create(100)         // 2 pages
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Stats(); got.ReservedPages != 2 || got.UsedTokens != 128 || got.TakenPages != 0 || got.Active != 1 {
		t.Fatalf("after one create: %+v", got)
	}
	if _, err := p.Create(512); err != nil { // 8 pages: exactly what is left
		t.Fatal(err)
	}
	_, err = p.Create(1)
	var full *FullError
	if !errors.As(err, &full) || full.NeededPages != 1 || full.FreePages != 0 {
		t.Fatalf("create on a full pool = %v, want a FullError needing 1 page with 0 free", err)
	}
	if got := p.Stats().Refused; got != 1 {
		t.Errorf("refused = %d, want 1", got)
	}
	// The admitted sequences can still write all they declared.
	r := rand.New(rand.NewPCG(1, 1))
	for layer := range 2 {
		if n, err := p.Append(a, layer, randomRows(r, 100)); err != nil || n != 100 {
			t.Fatalf("append to the admitted sequence: n=%d err=%v", n, err)
		}
	}
	checkInvariants(t, p)
	if err := p.Free(a); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Create(128); err != nil {
		t.Fatalf("create after free: %v", err)
	}
	checkInvariants(t, p)
}

func TestCreateRejectsLengthsOutsideContextLimit(t *testing.T) {
	p := newTestPool(t, 1, 10, 500)
	for _, n := range []int64{0, -1, 501, 1 << 40} {
		_, err := p.Create(n)
		var tooLong *TooLongError
		if !errors.As(err, &tooLong) || tooLong.Limit != 500 {
			t.Errorf("Create(%d) = %v, want a TooLongError with limit 500", n, err)
		}
	}
	if got := p.Stats(); got.ReservedPages != 0 || got.Refused != 0 {
		t.Errorf("rejected creations changed the accounting: %+v", got)
	}
}

func TestNewRejectsContextLimitBeyondCapacity(t *testing.T) {
	cache, err := engine.NewCPU(1).NewCache(engine.CacheShape{Layers: 1, Pages: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	if _, err := New(cache, 129); err == nil {
		t.Fatal("a context limit beyond the pool's 128 tokens was accepted")
	}
}

func TestAppendTakesPagesLazilyAndStopsAtDeclaredLength(t *testing.T) {
	p := newTestPool(t, 3, 8, 512)
	id, err := p.Create(130) // 3 pages reserved
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(2, 2))
	if _, err := p.Append(id, 1, randomRows(r, 64)); err != nil {
		t.Fatal(err)
	}
	if got := p.Stats().TakenPages; got != 1 {
		t.Fatalf("after 64 tokens in layer 1: %d pages taken, want 1", got)
	}
	// Layer 0 reuses the same page: the block table is shared by layers.
	if _, err := p.Append(id, 0, randomRows(r, 65)); err != nil {
		t.Fatal(err)
	}
	if got := p.Stats().TakenPages; got != 2 {
		t.Fatalf("after 65 tokens in layer 0: %d pages taken, want 2", got)
	}
	_, err = p.Append(id, 0, randomRows(r, 66))
	var over *OverflowError
	if !errors.As(err, &over) || over.Length != 65 || over.MaxTokens != 130 {
		t.Fatalf("append past the declared length = %v, want an OverflowError", err)
	}
	info, err := p.Info(id)
	if err != nil {
		t.Fatal(err)
	}
	if info.Lengths[0] != 65 || info.Lengths[1] != 64 || info.Lengths[2] != 0 || info.ReservedTokens != 192 {
		t.Fatalf("info after a refused append: %+v", info)
	}
	for _, bad := range [][]uint16{nil, make([]uint16, engine.RowDim+1)} {
		if _, err := p.Append(id, 0, bad); err == nil {
			t.Errorf("append of %d values accepted", len(bad))
		}
	}
	if _, err := p.Append(id, 3, randomRows(r, 1)); err == nil {
		t.Error("append to layer 3 of 3 accepted")
	}
	if _, err := p.Append(id+100, 0, randomRows(r, 1)); !errors.Is(err, ErrNotFound) {
		t.Errorf("append to an unknown sequence = %v, want ErrNotFound", err)
	}
	checkInvariants(t, p)
}

func TestFreeOfPinnedSequenceWaitsForItsOperations(t *testing.T) {
	p := newTestPool(t, 1, 2, 128)
	id, err := p.Create(128)
	if err != nil {
		t.Fatal(err)
	}
	seqs, err := p.pin(id) // as a decode in flight would
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Free(id); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Create(1); err == nil {
		t.Fatal("pages of a sequence still being decoded were handed out")
	}
	if err := p.Free(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("second free = %v, want ErrNotFound", err)
	}
	p.unpin(seqs...)
	if _, err := p.Create(128); err != nil {
		t.Fatalf("create after the last operation ended: %v", err)
	}
	checkInvariants(t, p)
}

func TestCreateWaitAdmitsWhenRoomFrees(t *testing.T) {
	p := newTestPool(t, 1, 2, 128)
	first, err := p.Create(128)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := p.CreateWait(context.Background(), 64)
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Waiting != 1 {
		if time.Now().After(deadline) {
			t.Fatal("waiter never registered")
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.Free(first); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiting create: %v", err)
	}
	if got := p.Stats(); got.Waiting != 0 || got.Active != 1 {
		t.Fatalf("after the waiter was admitted: %+v", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	var full *FullError
	if _, err := p.CreateWait(ctx, 128); !errors.As(err, &full) {
		t.Fatalf("create that times out = %v, want FullError", err)
	}
	if got := p.Stats().Refused; got != 1 {
		t.Errorf("refused after a timed-out wait = %d, want 1", got)
	}
}

func TestStopAdmitting(t *testing.T) {
	p := newTestPool(t, 1, 2, 128)
	id, err := p.Create(64)
	if err != nil {
		t.Fatal(err)
	}
	waiter := make(chan error, 1)
	go func() { _, err := p.CreateWait(context.Background(), 128); waiter <- err }()
	for p.Stats().Waiting != 1 {
		time.Sleep(time.Millisecond)
	}
	p.StopAdmitting()
	if err := <-waiter; !errors.Is(err, ErrNotAdmitting) {
		t.Errorf("waiting create after drain = %v, want ErrNotAdmitting", err)
	}
	if _, err := p.Create(1); !errors.Is(err, ErrNotAdmitting) {
		t.Errorf("create after drain = %v, want ErrNotAdmitting", err)
	}
	// Existing sequences keep working.
	if _, err := p.Append(id, 0, randomRows(rand.New(rand.NewPCG(1, 1)), 3)); err != nil {
		t.Errorf("append while draining: %v", err)
	}
	if s := p.Stats(); s.Admitting || s.Active != 1 {
		t.Errorf("stats while draining: %+v", s)
	}
}

func TestDecodeUsesEachSequencesOwnRows(t *testing.T) {
	// Decoding a batch must equal decoding each sequence alone.
	p := newTestPool(t, 2, 16, 1024)
	e := engine.NewCPU(2)
	r := rand.New(rand.NewPCG(4, 4))
	var ids []SeqID
	for _, n := range []int{5, 70, 200} {
		id, err := p.Create(int64(n) + 10)
		if err != nil {
			t.Fatal(err)
		}
		for layer := range 2 {
			if _, err := p.Append(id, layer, randomRows(r, n)); err != nil {
				t.Fatal(err)
			}
		}
		ids = append(ids, id)
	}
	const heads = 16
	q := randomRows(r, len(ids)*heads)
	batch := &DecodeStep{Layer: 1, IDs: ids, SQ: 1, Heads: heads, Scale: 0.07, Q: q,
		Out: make([]uint16, len(ids)*heads*engine.LatentDim), LSE: make([]float32, len(ids)*heads)}
	if err := p.Decode(context.Background(), e, batch); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		one := &DecodeStep{Layer: 1, IDs: []SeqID{id}, SQ: 1, Heads: heads, Scale: 0.07,
			Q:   q[i*heads*engine.RowDim : (i+1)*heads*engine.RowDim],
			Out: make([]uint16, heads*engine.LatentDim), LSE: make([]float32, heads)}
		if err := p.Decode(context.Background(), e, one); err != nil {
			t.Fatal(err)
		}
		for j, v := range one.Out {
			if batch.Out[i*heads*engine.LatentDim+j] != v {
				t.Fatalf("sequence %d: batched output differs from decoding it alone at %d", id, j)
			}
		}
	}
	// A sequence with fewer tokens than queries is refused with its id.
	short, _ := p.Create(10)
	bad := &DecodeStep{Layer: 0, IDs: []SeqID{ids[0], short}, SQ: 1, Heads: heads, Scale: 0.07,
		Q: randomRows(r, 2*heads), Out: make([]uint16, 2*heads*engine.LatentDim), LSE: make([]float32, 2*heads)}
	if err := p.Decode(context.Background(), e, bad); err == nil {
		t.Fatal("decode over an empty sequence succeeded")
	}
	checkInvariants(t, p)
}

func checksum(rows []uint16) uint32 {
	return crc32.ChecksumIEEE(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(rows))), len(rows)*2))
}

// TestConcurrentSequencesDoNotCorruptEachOther runs many sequences that
// create, append in ragged chunks across layers, decode, read back and free
// at once; every sequence's rows must read back with the checksum of what
// it wrote, and the accounting must come back to empty.
func TestConcurrentSequencesDoNotCorruptEachOther(t *testing.T) {
	const (
		layers   = 3
		workers  = 16
		rounds   = 6
		heads    = 16
		maxToken = 300
	)
	// Room for about half the workers at their largest: admission contends.
	p := newTestPool(t, layers, workers/2*((maxToken+63)/64), maxToken)
	e := engine.NewCPU(2)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 99))
			for range rounds {
				n := 1 + r.IntN(maxToken)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				id, err := p.CreateWait(ctx, int64(n))
				cancel()
				if err != nil {
					errs <- err
					return
				}
				want := make([][]uint16, layers)
				for layer := range layers {
					want[layer] = randomRows(r, n)
				}
				// Append every layer in ragged chunks, interleaved.
				written := make([]int, layers)
				for done := 0; done < layers; {
					layer := r.IntN(layers)
					if written[layer] == n {
						continue
					}
					chunk := min(n-written[layer], 1+r.IntN(80))
					rows := want[layer][written[layer]*engine.RowDim : (written[layer]+chunk)*engine.RowDim]
					if _, err := p.Append(id, layer, rows); err != nil {
						errs <- err
						return
					}
					if written[layer] += chunk; written[layer] == n {
						done++
					}
				}
				step := &DecodeStep{Layer: r.IntN(layers), IDs: []SeqID{id}, SQ: 1, Heads: heads, Scale: 0.1,
					Q: randomRows(r, heads), Out: make([]uint16, heads*engine.LatentDim), LSE: make([]float32, heads)}
				if err := p.Decode(context.Background(), e, step); err != nil {
					errs <- err
					return
				}
				for layer := range layers {
					got, err := p.Read(id, layer, 0, n)
					if err != nil {
						errs <- err
						return
					}
					if checksum(got) != checksum(want[layer]) {
						t.Errorf("sequence %d layer %d: rows read back differ from those written", id, layer)
					}
				}
				if err := p.Free(id); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkInvariants(t, p)
	if s := p.Stats(); s.Active != 0 || s.ReservedPages != 0 || s.TakenPages != 0 || s.Waiting != 0 {
		t.Errorf("pool not empty after every sequence was freed: %+v", s)
	}
}
