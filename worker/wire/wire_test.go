package wire

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/mla-operator/mla-operator/worker/bf16"
)

func randomBF16(r *rand.Rand, n int) []uint16 {
	v := make([]uint16, n)
	for i := range v {
		v[i] = bf16.FromFloat32(r.Float32()*4 - 2)
	}
	return v
}

func TestRowsRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	rows := randomBF16(r, 3*RowDim)
	for _, dt := range []DType{BF16, FP32} {
		got, err := DecodeRows(EncodeRows(dt, rows))
		if err != nil {
			t.Fatalf("%s: %v", dt, err)
		}
		if !equal(got, rows) {
			t.Errorf("%s: rows changed in a round trip", dt)
		}
	}
	// fp32 input is rounded to nearest even on the way in.
	f := make([]float32, RowDim)
	for i := range f {
		f[i] = r.Float32()
	}
	got, err := DecodeRows(EncodeRowsFloat32(f))
	if err != nil {
		t.Fatal(err)
	}
	for i := range f {
		if got[i] != bf16.FromFloat32(f[i]) {
			t.Fatalf("fp32 value %d decoded to %#x, want %#x", i, got[i], bf16.FromFloat32(f[i]))
		}
	}
}

func TestDecodeRowsRejectsMalformed(t *testing.T) {
	good := EncodeRows(BF16, make([]uint16, 2*RowDim))
	for _, tc := range []struct {
		name  string
		frame []byte
		want  string
	}{
		{"empty", nil, "shorter than"},
		{"wrong magic", append([]byte("MLAD"), good[4:]...), "must start with"},
		{"unknown dtype", patch(good, 4, 9), "unknown dtype"},
		{"reserved set", patch(good, 6, 1), "reserved"},
		{"zero tokens", patchU32(good, 8, 0), "token count"},
		{"huge token count", patchU32(good, 8, math.MaxUint32), "token count"},
		{"wrong width", patchU32(good, 12, 512), "row width"},
		{"truncated", good[:len(good)-1], "need"},
		{"trailing bytes", append(bytes.Clone(good), 0), "need"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeRows(tc.frame)
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DecodeRows = %v, want ErrMalformed mentioning %q", err, tc.want)
			}
		})
	}
}

func testDecodeRequest(r *rand.Rand) *DecodeRequest {
	return &DecodeRequest{Layer: 3, SQ: 2, Heads: 16, Scale: 0.125, IDs: []uint64{7, 1 << 40},
		Q: randomBF16(r, 2*2*16*RowDim), OutDType: FP32}
}

func TestDecodeRequestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, qd := range []DType{BF16, FP32} {
		want := testDecodeRequest(r)
		want.QDType = qd
		got, err := UnmarshalDecodeRequest(want.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		if got.Layer != want.Layer || got.SQ != want.SQ || got.Heads != want.Heads || got.Scale != want.Scale ||
			got.QDType != qd || got.OutDType != FP32 || len(got.IDs) != 2 || got.IDs[1] != 1<<40 || !equal(got.Q, want.Q) {
			t.Errorf("%s q: round trip changed the request", qd)
		}
	}
}

func TestUnmarshalDecodeRequestRejectsMalformed(t *testing.T) {
	good := testDecodeRequest(rand.New(rand.NewPCG(5, 6))).Marshal()
	for _, tc := range []struct {
		name  string
		frame []byte
		want  string
	}{
		{"short", good[:31], "shorter than"},
		{"wrong magic", append([]byte("MLAR"), good[4:]...), "must start with"},
		{"bad q dtype", patch(good, 4, 0), "q: unknown dtype"},
		{"bad out dtype", patch(good, 5, 3), "out: unknown dtype"},
		{"reserved tail", patchU32(good, 28, 1), "reserved"},
		{"zero batch", patchU32(good, 12, 0), "batch"},
		{"giant batch", patchU32(good, 12, MaxBatch+1), "batch"},
		{"s_q 3", patchU32(good, 16, 3), "s_q"},
		{"heads 8", patchU32(good, 20, 8), "heads"},
		{"NaN scale", patchU32(good, 24, 0x7fc00000), "scale"},
		{"negative scale", patchU32(good, 24, math.Float32bits(-1)), "scale"},
		{"layer overflow", patchU32(good, 8, math.MaxUint32), "layer"},
		{"batch larger than ids", patchU32(good, 12, 3), "need"},
		{"truncated q", good[:len(good)-2], "need"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := UnmarshalDecodeRequest(tc.frame)
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("UnmarshalDecodeRequest = %v, want ErrMalformed mentioning %q", err, tc.want)
			}
		})
	}
}

func TestDecodeResponseRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, od := range []DType{BF16, FP32} {
		want := &DecodeResponse{Batch: 2, SQ: 1, Heads: 32, OutDType: od, Out: randomBF16(r, 2*32*LatentDim),
			LSE: []float32{}}
		for range 2 * 32 {
			want.LSE = append(want.LSE, r.Float32()*10)
		}
		got, err := UnmarshalDecodeResponse(want.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		if got.Batch != 2 || got.SQ != 1 || got.Heads != 32 || got.OutDType != od || !equal(got.Out, want.Out) {
			t.Fatalf("%s: round trip changed the response", od)
		}
		for i := range want.LSE {
			if got.LSE[i] != want.LSE[i] {
				t.Fatalf("%s: lse %d changed", od, i)
			}
		}
	}
	if _, err := UnmarshalDecodeResponse([]byte("MLAO")); !errors.Is(err, ErrMalformed) {
		t.Errorf("short response = %v, want ErrMalformed", err)
	}
}

func TestDecodeJSON(t *testing.T) {
	var req CreateSequenceRequest
	if err := DecodeJSON(strings.NewReader(`{"maxTokens": 4096, "waitSeconds": 1.5}`), &req); err != nil {
		t.Fatal(err)
	}
	if req.MaxTokens != 4096 || req.WaitSeconds != 1.5 || req.Validate() != nil {
		t.Fatalf("decoded %+v", req)
	}
	for _, body := range []string{
		``, `{`, `[1]`, `{"maxTokens": "x"}`, `{"maxToken": 1}`, `{"maxTokens": 1} {}`,
		`{"maxTokens": 1, "pad": "` + strings.Repeat("x", MaxJSONBytes) + `"}`,
	} {
		var r CreateSequenceRequest
		if err := DecodeJSON(strings.NewReader(body), &r); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeJSON(%.40q) = %v, want ErrMalformed", body, err)
		}
	}
	for _, r := range []CreateSequenceRequest{{MaxTokens: 0}, {MaxTokens: 1, WaitSeconds: -1},
		{MaxTokens: 1, WaitSeconds: MaxWaitSeconds + 1}, {MaxTokens: 1, WaitSeconds: math.NaN()}} {
		if r.Validate() == nil {
			t.Errorf("%+v validated", r)
		}
	}
}

func equal(a, b []uint16) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func patch(b []byte, at int, v byte) []byte {
	c := bytes.Clone(b)
	c[at] = v
	return c
}

func patchU32(b []byte, at int, v uint32) []byte {
	c := bytes.Clone(b)
	le.PutUint32(c[at:], v)
	return c
}

func TestResponseFrameEqualsMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	frame, out, lse, ok := ResponseFrame(3, 2, 16)
	if !ok {
		t.Skip("big-endian host: ResponseFrame is not available")
	}
	copy(out, randomBF16(r, len(out)))
	for i := range lse {
		lse[i] = r.Float32()
	}
	want := (&DecodeResponse{Batch: 3, SQ: 2, Heads: 16, OutDType: BF16, Out: out, LSE: lse}).Marshal()
	if !bytes.Equal(frame, want) {
		t.Fatal("frame filled in place differs from Marshal's")
	}
}
