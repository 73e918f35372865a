package server_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"testing"

	"github.com/mla-operator/mla-operator/worker/client"
	"github.com/mla-operator/mla-operator/worker/engine"
	"github.com/mla-operator/mla-operator/worker/kvcache"
	"github.com/mla-operator/mla-operator/worker/server"
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

// nullEngine fills outputs without computing attention, so a benchmark over
// it measures only what the API adds: framing, copies, HTTP, the client.
type nullEngine struct{ engine.Engine }

func (nullEngine) Name() string { return "null" }

func (nullEngine) Decode(_ context.Context, c engine.Cache, req *engine.DecodeRequest) error {
	if err := req.Validate(c.Shape()); err != nil {
		return err
	}
	// Each head's output is the first 512 values of its query.
	for i := 0; i < len(req.Out)/engine.LatentDim; i++ {
		copy(req.Out[i*engine.LatentDim:(i+1)*engine.LatentDim], req.Q[i*engine.RowDim:])
	}
	for i := range req.LSE {
		req.LSE[i] = 1
	}
	return nil
}

// BenchmarkAPIOverhead is a decode step's cost through the HTTP API with an
// engine that does no work: bf16 q of batch x heads x 576 in, bf16 out of
// batch x heads x 512 and fp32 lse back, over loopback.
func BenchmarkAPIOverhead(b *testing.B) {
	for _, bc := range []struct{ batch, heads int }{{1, 16}, {1, 128}, {64, 128}} {
		f := newFixture(b, bc.batch+1, 64)
		f.engine = nullEngine{f.engine}
		srv, err := server.New(server.Config{Pool: f.pool, Engine: f.engine, Heads: bc.heads, SoftmaxScale: testScale})
		if err != nil {
			b.Fatal(err)
		}
		hs := httptest.NewServer(srv.Handler())
		c := client.New(hs.URL, hs.Client())
		r := rand.New(rand.NewPCG(2, 2))
		ids := make([]uint64, bc.batch)
		for i := range ids {
			ids[i], _ = f.filledSequence(b, r, 64, 8)
		}
		req := &wire.DecodeRequest{Layer: 0, SQ: 1, Heads: bc.heads, IDs: ids, Q: randomRows(r, bc.batch*bc.heads)}
		b.Run(fmt.Sprintf("batch=%d/heads=%d", bc.batch, bc.heads), func(b *testing.B) {
			b.SetBytes(int64(len(req.Marshal()) + 24 + bc.batch*bc.heads*(512*2+4)))
			for b.Loop() {
				if _, err := c.Decode(context.Background(), req); err != nil {
					b.Fatal(err)
				}
			}
		})
		hs.Close()
	}
}
