package kvcache

import (
	"math/rand/v2"
	"testing"

	"github.com/mla-operator/mla-operator/worker/engine"
)

// BenchmarkCreateFree admits and frees a sequence of DeepSeek's full
// 163,840-token context in a pool sized like an 80 GB GPU's: reservation
// touches no pages, so it is what filling a worker's cache costs.
func BenchmarkCreateFree(b *testing.B) {
	p := newTestPool(b, 27, 21806, 163840)
	for b.Loop() {
		id, err := p.Create(163840)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Free(id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendToken appends one token's row to one layer, as decoding
// does every step.
func BenchmarkAppendToken(b *testing.B) {
	p := newTestPool(b, 1, 1024, 65536)
	row := randomRows(rand.New(rand.NewPCG(1, 1)), 1)
	id, err := p.Create(65536)
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for b.Loop() {
		if n == 65536 {
			b.StopTimer()
			p.Free(id)
			if id, err = p.Create(65536); err != nil {
				b.Fatal(err)
			}
			n = 0
			b.StartTimer()
		}
		if _, err := p.Append(id, 0, row); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.SetBytes(engine.RowDim * 2)
}
