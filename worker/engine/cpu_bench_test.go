package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkCPUDecode measures one decode step of one layer. Keys per second
// counts (sequence tokens x heads x s_q) scored and accumulated.
func BenchmarkCPUDecode(b *testing.B) {
	for _, bc := range []struct{ batch, heads, seqLen int }{
		{1, 16, 1024},
		{8, 16, 1024},
		{4, 128, 1024},
		{32, 16, 4096},
	} {
		b.Run(fmt.Sprintf("batch=%d/heads=%d/len=%d", bc.batch, bc.heads, bc.seqLen), func(b *testing.B) {
			e := NewCPU(0)
			lens := make([]int32, bc.batch)
			for i := range lens {
				lens[i] = int32(bc.seqLen)
			}
			c := decodeCase{layers: 1, heads: bc.heads, sq: 1, seqLens: lens, scale: 0.1}
			f := c.build(b, e, rand.New(rand.NewPCG(1, 1)))
			ctx := context.Background()
			b.ResetTimer()
			for b.Loop() {
				if err := e.Decode(ctx, f.cache, f.req); err != nil {
					b.Fatal(err)
				}
			}
			keys := float64(bc.batch * bc.heads * bc.seqLen)
			b.ReportMetric(keys*float64(b.N)/b.Elapsed().Seconds(), "keys/s")
		})
	}
}
