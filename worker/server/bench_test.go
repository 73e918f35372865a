package server_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/mla-operator/mla-operator/worker/kvcache"
	"github.com/mla-operator/mla-operator/worker/wire"
)

// BenchmarkDecodeStep runs the same decode step directly on the pool and
// through the HTTP API over loopback with the Go client; the difference per
// step is the API's overhead (framing, copies, HTTP, the client).
func BenchmarkDecodeStep(b *testing.B) {
	for _, bc := range []struct{ batch, seqLen int }{{1, 64}, {8, 64}, {32, 256}} {
		f := newFixture(b, bc.batch*((bc.seqLen+63)/64)+1, int64(bc.seqLen))
		r := rand.New(rand.NewPCG(1, 1))
		ids := make([]uint64, bc.batch)
		seqIDs := make([]kvcache.SeqID, bc.batch)
		for i := range ids {
			ids[i], _ = f.filledSequence(b, r, int64(bc.seqLen), bc.seqLen)
			seqIDs[i] = kvcache.SeqID(ids[i])
		}
		q := randomRows(r, bc.batch*testHeads)
		ctx := context.Background()
		name := fmt.Sprintf("batch=%d/heads=%d/len=%d", bc.batch, testHeads, bc.seqLen)
		b.Run(name+"/direct", func(b *testing.B) {
			for b.Loop() {
				step := &kvcache.DecodeStep{Layer: 1, IDs: seqIDs, SQ: 1, Heads: testHeads, Scale: testScale, Q: q,
					Out: make([]uint16, len(q)/576*512), LSE: make([]float32, bc.batch*testHeads)}
				if err := f.pool.Decode(ctx, f.engine, step); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/http", func(b *testing.B) {
			req := &wire.DecodeRequest{Layer: 1, SQ: 1, Heads: testHeads, IDs: ids, Q: q}
			for b.Loop() {
				if _, err := f.client.Decode(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
