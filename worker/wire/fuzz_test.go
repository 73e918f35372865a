package wire

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
)

// The seed corpora below run in every `go test`; `go test -fuzz=FuzzX`
// explores further. Each target checks that decoding never panics or
// over-allocates, and that whatever decodes re-encodes to the same bytes
// (bf16 frames) or to a frame that decodes the same (fp32, where NaN
// payloads are normalised).

func FuzzDecodeRows(f *testing.F) {
	r := rand.New(rand.NewPCG(1, 1))
	f.Add(EncodeRows(BF16, randomBF16(r, RowDim)))
	f.Add(EncodeRows(FP32, randomBF16(r, 2*RowDim)))
	f.Add([]byte("MLAR"))
	f.Add(patchU32(EncodeRows(BF16, randomBF16(r, RowDim)), 8, 1<<30))
	f.Fuzz(func(t *testing.T, b []byte) {
		rows, err := DecodeRows(b)
		if err != nil {
			return
		}
		if len(rows) == 0 || len(rows)%RowDim != 0 {
			t.Fatalf("decoded %d values, not whole rows", len(rows))
		}
		if DType(b[4]) == BF16 && !bytes.Equal(EncodeRows(BF16, rows), b) {
			t.Fatal("bf16 frame does not re-encode to itself")
		}
		again, err := DecodeRows(EncodeRows(DType(b[4]), rows))
		if err != nil || !equal(again, rows) {
			t.Fatalf("re-encoded frame decodes differently: %v", err)
		}
	})
}

func FuzzUnmarshalDecodeRequest(f *testing.F) {
	r := rand.New(rand.NewPCG(2, 2))
	f.Add(testDecodeRequest(r).Marshal())
	one := &DecodeRequest{SQ: 1, Heads: 16, IDs: []uint64{1}, Q: randomBF16(r, 16*RowDim), QDType: FP32}
	f.Add(one.Marshal())
	f.Add(patchU32(one.Marshal(), 12, MaxBatch))
	f.Add([]byte("MLAD"))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := UnmarshalDecodeRequest(b)
		if err != nil {
			return
		}
		if len(req.Q) != len(req.IDs)*req.SQ*req.Heads*RowDim {
			t.Fatalf("q has %d values for %d ids, s_q %d, %d heads", len(req.Q), len(req.IDs), req.SQ, req.Heads)
		}
		again, err := UnmarshalDecodeRequest(req.Marshal())
		if err != nil || !equal(again.Q, req.Q) || again.Layer != req.Layer || len(again.IDs) != len(req.IDs) {
			t.Fatalf("re-marshalled request decodes differently: %v", err)
		}
		if req.QDType == BF16 && !bytes.Equal(req.Marshal(), b) {
			t.Fatal("bf16 frame does not re-marshal to itself")
		}
	})
}

func FuzzUnmarshalDecodeResponse(f *testing.F) {
	r := rand.New(rand.NewPCG(3, 3))
	resp := &DecodeResponse{Batch: 1, SQ: 1, Heads: 16, Out: randomBF16(r, 16*LatentDim), LSE: make([]float32, 16)}
	f.Add(resp.Marshal())
	resp.OutDType = FP32
	f.Add(resp.Marshal())
	f.Add([]byte("MLAO\x01\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := UnmarshalDecodeResponse(b)
		if err != nil {
			return
		}
		if len(got.Out) != got.Batch*got.SQ*got.Heads*LatentDim || len(got.LSE) != got.Batch*got.Heads*got.SQ {
			t.Fatal("decoded sizes disagree with the header")
		}
		if got.OutDType == BF16 && !bytes.Equal(got.Marshal(), b) {
			t.Fatal("bf16 response does not re-marshal to itself")
		}
	})
}

func FuzzDecodeJSONCreate(f *testing.F) {
	f.Add(`{"maxTokens": 4096}`)
	f.Add(`{"maxTokens": 1, "waitSeconds": 2.5}`)
	f.Add(`{"maxTokens": -5}`)
	f.Add(`{"maxTokens": 1e30}`)
	f.Add(`null`)
	f.Fuzz(func(t *testing.T, body string) {
		var req CreateSequenceRequest
		if err := DecodeJSON(strings.NewReader(body), &req); err != nil {
			return
		}
		if req.Validate() == nil && (req.MaxTokens < 1 || req.WaitSeconds < 0 || req.WaitSeconds > MaxWaitSeconds) {
			t.Fatalf("invalid request validated: %+v", req)
		}
	})
}
