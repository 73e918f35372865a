package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mla-operator/mla-operator/worker/bf16"
	"github.com/mla-operator/mla-operator/worker/client"
	"github.com/mla-operator/mla-operator/worker/engine"
	"github.com/mla-operator/mla-operator/worker/kvcache"
	"github.com/mla-operator/mla-operator/worker/server"
	"github.com/mla-operator/mla-operator/worker/wire"
)

const (
	testLayers = 2
	testHeads  = 16
	testScale  = float32(0.0721)
)

type fixture struct {
	pool   *kvcache.Pool
	engine engine.Engine
	srv    *server.Server
	http   *httptest.Server
	client *client.Client
}

// newFixture serves a pool of pages pages with a context limit of limit
// tokens on a loopback listener.
func newFixture(t testing.TB, pages int, limit int64) *fixture {
	t.Helper()
	e := engine.NewCPU(2)
	cache, err := e.NewCache(engine.CacheShape{Layers: testLayers, Pages: pages})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := kvcache.New(cache, limit)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Pool: pool, Engine: e, ModelName: "test-model", Heads: testHeads,
		SoftmaxScale: testScale, Device: "cpu", GPUProduct: "NVIDIA-H100-80GB-HBM3"})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		hs.Close()
		cache.Close()
	})
	return &fixture{pool: pool, engine: e, srv: srv, http: hs, client: client.New(hs.URL, hs.Client())}
}

func randomRows(r *rand.Rand, tokens int) []uint16 {
	rows := make([]uint16, tokens*engine.RowDim)
	for i := range rows {
		rows[i] = bf16.FromFloat32(r.Float32()*2 - 1)
	}
	return rows
}

func checksum(v []uint16) uint32 {
	return crc32.ChecksumIEEE(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 2*len(v)))
}

// filledSequence creates a sequence and appends n random tokens to every
// layer, returning what was written per layer.
func (f *fixture) filledSequence(t testing.TB, r *rand.Rand, maxTokens int64, n int) (uint64, [][]uint16) {
	t.Helper()
	ctx := context.Background()
	seq, err := f.client.CreateSequence(ctx, maxTokens)
	if err != nil {
		t.Fatal(err)
	}
	rows := make([][]uint16, testLayers)
	for layer := range testLayers {
		rows[layer] = randomRows(r, n)
		if got, err := f.client.AppendKV(ctx, seq.ID, layer, rows[layer]); err != nil || got != n {
			t.Fatalf("append: length %d, err %v", got, err)
		}
	}
	return seq.ID, rows
}

func TestSequenceLifecycleAndDecode(t *testing.T) {
	f := newFixture(t, 32, 1024)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 1))
	a, rowsA := f.filledSequence(t, r, 300, 130)
	b, _ := f.filledSequence(t, r, 100, 70)

	info, err := f.client.Sequence(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if info.MaxTokens != 300 || info.ReservedTokens != 320 || len(info.Lengths) != testLayers || info.Lengths[1] != 130 {
		t.Fatalf("sequence info = %+v", info)
	}
	got, err := f.client.ReadKV(ctx, a, 1, 10, 100)
	if err != nil {
		t.Fatal(err)
	}
	if checksum(got) != checksum(rowsA[1][10*engine.RowDim:110*engine.RowDim]) {
		t.Fatal("rows read back over the API differ from those appended")
	}

	// A decode over the API equals the same step run directly on the pool,
	// with the model's scale when the request gives 0.
	q := randomRows(r, 2*testHeads)
	req := &wire.DecodeRequest{Layer: 1, SQ: 1, Heads: testHeads, IDs: []uint64{a, b}, Q: q}
	resp, err := f.client.Decode(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	direct := &kvcache.DecodeStep{Layer: 1, IDs: []kvcache.SeqID{kvcache.SeqID(a), kvcache.SeqID(b)}, SQ: 1,
		Heads: testHeads, Scale: testScale, Q: q, Out: make([]uint16, 2*testHeads*engine.LatentDim),
		LSE: make([]float32, 2*testHeads)}
	if err := f.pool.Decode(ctx, f.engine, direct); err != nil {
		t.Fatal(err)
	}
	if resp.Batch != 2 || checksum(resp.Out) != checksum(direct.Out) {
		t.Fatal("decode over the API differs from decoding on the pool")
	}
	for i := range direct.LSE {
		if resp.LSE[i] != direct.LSE[i] {
			t.Fatalf("lse %d: API %g, direct %g", i, resp.LSE[i], direct.LSE[i])
		}
	}
	// fp32 output carries the same values widened.
	req.OutDType = wire.FP32
	resp32, err := f.client.Decode(ctx, req)
	if err != nil || checksum(resp32.Out) != checksum(direct.Out) {
		t.Fatalf("fp32 decode differs: %v", err)
	}

	if err := f.client.FreeSequence(ctx, a); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.Sequence(ctx, a); !client.IsNotFound(err) {
		t.Fatalf("freed sequence lookup = %v, want 404", err)
	}
	capy, err := f.client.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if capy.CapacityTokens != 32*64 || capy.UsedTokens != 128 || capy.ActiveSequences != 1 || !capy.Ready ||
		capy.Pages != 32 || capy.MaxContextLength != 1024 || capy.SoftmaxScale != testScale {
		t.Fatalf("capacity = %+v", capy)
	}
}

func TestErrorsAreCleanAndLeaveOtherSequencesAlone(t *testing.T) {
	f := newFixture(t, 8, 256) // 512 tokens of pages, context limit 256
	ctx := context.Background()
	r := rand.New(rand.NewPCG(2, 2))
	keep, keepRows := f.filledSequence(t, r, 256, 200)
	q := randomRows(r, testHeads)
	before, err := f.client.Decode(ctx, &wire.DecodeRequest{Layer: 0, SQ: 1, Heads: testHeads, IDs: []uint64{keep}, Q: q})
	if err != nil {
		t.Fatal(err)
	}

	// Longer than the context limit: 400 naming the limit.
	_, err = f.client.CreateSequence(ctx, 257)
	if !client.IsBadRequest(err) || !strings.Contains(err.Error(), "256") {
		t.Errorf("too long = %v, want 400 with the limit", err)
	}
	// Fill the rest, then a full pool: 429 with Retry-After.
	if _, err := f.client.CreateSequence(ctx, 256); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.CreateSequence(ctx, 1)
	var apiErr *client.APIError
	if !client.IsFull(err) || !errors.As(err, &apiErr) {
		t.Errorf("full = %v, want 429", err)
	} else if apiErr.RetryAfter != time.Second {
		t.Errorf("429 Retry-After = %v, want 1s", apiErr.RetryAfter)
	}
	// A bounded wait on a full pool also ends in 429.
	if _, err := f.client.CreateSequenceWait(ctx, 1, 20*time.Millisecond); !client.IsFull(err) {
		t.Errorf("waiting create on a full pool = %v, want 429", err)
	}

	// Malformed and wrong requests: 400, or 404 for unknown sequences.
	post := func(path, ct string, body []byte) int {
		resp, err := f.http.Client().Post(f.http.URL+path, ct, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	kv := "/v1/sequences/" + itoa(keep) + "/layers/0/kv"
	for _, tc := range []struct {
		name, path string
		body       []byte
		want       int
	}{
		{"create with unknown field", "/v1/sequences", []byte(`{"maxTokens":1,"x":1}`), 400},
		{"create with negative length", "/v1/sequences", []byte(`{"maxTokens":-1}`), 400},
		{"rows as JSON", kv, []byte(`[[1,2,3]]`), 400},
		{"truncated rows", kv, wire.EncodeRows(wire.BF16, randomRows(r, 1))[:100], 400},
		{"rows past the declared length", kv, wire.EncodeRows(wire.BF16, randomRows(r, 57)), 400},
		{"rows to a missing layer", "/v1/sequences/" + itoa(keep) + "/layers/9/kv", wire.EncodeRows(wire.BF16, randomRows(r, 1)), 400},
		{"rows to an unknown sequence", "/v1/sequences/999/layers/0/kv", wire.EncodeRows(wire.BF16, randomRows(r, 1)), 404},
		{"bad sequence id", "/v1/sequences/abc/layers/0/kv", wire.EncodeRows(wire.BF16, randomRows(r, 1)), 400},
		{"decode garbage", "/v1/decode", []byte("MLAD garbage"), 400},
		{"decode unknown sequence", "/v1/decode", (&wire.DecodeRequest{SQ: 1, Heads: 16, IDs: []uint64{keep, 999}, Q: randomRows(r, 32)}).Marshal(), 404},
		{"decode missing layer", "/v1/decode", (&wire.DecodeRequest{Layer: 5, SQ: 1, Heads: 16, IDs: []uint64{keep}, Q: randomRows(r, 16)}).Marshal(), 400},
	} {
		if got := post(tc.path, wire.ContentType, tc.body); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.want)
		}
	}

	// None of that disturbed the kept sequence.
	for layer := range testLayers {
		got, err := f.client.ReadKV(ctx, keep, layer, 0, 200)
		if err != nil || checksum(got) != checksum(keepRows[layer]) {
			t.Fatalf("layer %d of the kept sequence changed (%v)", layer, err)
		}
	}
	after, err := f.client.Decode(ctx, &wire.DecodeRequest{Layer: 0, SQ: 1, Heads: testHeads, IDs: []uint64{keep}, Q: q})
	if err != nil || checksum(after.Out) != checksum(before.Out) {
		t.Fatalf("decode of the kept sequence changed (%v)", err)
	}
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }

func TestDrainStopsAdmittingButServesExistingSequences(t *testing.T) {
	f := newFixture(t, 8, 256)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(3, 3))
	id, _ := f.filledSequence(t, r, 100, 50)
	if err := f.client.Ready(ctx); err != nil {
		t.Fatalf("ready before drain: %v", err)
	}
	f.srv.Drain()
	if err := f.client.Ready(ctx); !client.IsDraining(err) {
		t.Errorf("readyz while draining = %v, want 503", err)
	}
	if _, err := f.client.CreateSequence(ctx, 10); !client.IsDraining(err) {
		t.Errorf("create while draining = %v, want 503", err)
	}
	if _, err := f.client.Decode(ctx, &wire.DecodeRequest{SQ: 1, Heads: testHeads, IDs: []uint64{id}, Q: randomRows(r, testHeads)}); err != nil {
		t.Errorf("decode while draining: %v", err)
	}
	if _, err := f.client.AppendKV(ctx, id, 0, randomRows(r, 1)); err != nil {
		t.Errorf("append while draining: %v", err)
	}
	capy, _ := f.client.Capacity(ctx)
	if capy.Ready || !capy.Draining {
		t.Errorf("capacity while draining: ready=%v draining=%v", capy.Ready, capy.Draining)
	}
	if err := f.client.FreeSequence(ctx, id); err != nil {
		t.Errorf("free while draining: %v", err)
	}
}

func TestMetricsUseVLLMNames(t *testing.T) {
	f := newFixture(t, 10, 640)
	ctx := context.Background()
	if _, err := f.client.CreateSequence(ctx, 150); err != nil { // 3 pages
		t.Fatal(err)
	}
	if _, err := f.client.CreateSequence(ctx, 64); err != nil { // 1 page
		t.Fatal(err)
	}
	if _, err := f.client.CreateSequence(ctx, 640); !client.IsFull(err) {
		t.Fatalf("create beyond room = %v, want 429", err)
	}
	resp, err := f.http.Client().Get(f.http.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	value := func(name string) float64 {
		mf, ok := families[name]
		if !ok || len(mf.Metric) != 1 {
			t.Fatalf("metric %s missing or not single: %v", name, mf)
		}
		m := mf.Metric[0]
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		}
		t.Fatalf("metric %s is neither gauge nor counter", name)
		return 0
	}
	for name, want := range map[string]float64{
		"vllm:kv_cache_usage_perc":    0.4,
		"vllm:num_requests_running":   2,
		"vllm:num_requests_waiting":   0,
		"vllm:cache_config_info":      1,
		"mla_kv_capacity_tokens":      640,
		"mla_kv_used_tokens":          256,
		"mla_sequences_refused_total": 1,
	} {
		if got := value(name); got != want {
			t.Errorf("%s = %g, want %g", name, got, want)
		}
	}
	labels := map[string]string{}
	for _, l := range families["vllm:cache_config_info"].Metric[0].Label {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["block_size"] != "64" || labels["num_gpu_blocks"] != "10" {
		t.Errorf("cache_config_info labels = %v", labels)
	}
	for _, l := range families["vllm:num_requests_running"].Metric[0].Label {
		if l.GetName() == "model_name" && l.GetValue() != "test-model" {
			t.Errorf("model_name label = %q", l.GetValue())
		}
	}
	if _, ok := families["mla_http_request_duration_seconds"]; !ok {
		t.Error("request latency histogram missing")
	}
}

// TestConcurrentClientsKeepTheirOwnRows runs sequences from many clients at
// once over HTTP, each checking what it reads back against what it wrote.
func TestConcurrentClientsKeepTheirOwnRows(t *testing.T) {
	f := newFixture(t, 24, 512)
	const clients, rounds = 8, 3
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 5))
			ctx := context.Background()
			for range rounds {
				n := 1 + r.IntN(300)
				seq, err := f.client.CreateSequenceWait(ctx, int64(n), 10*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				var sums [testLayers]uint32
				for layer := range testLayers {
					rows := randomRows(r, n)
					sums[layer] = checksum(rows)
					for off := 0; off < n; off += 50 {
						end := min(n, off+50)
						if _, err := f.client.AppendKV(ctx, seq.ID, layer, rows[off*engine.RowDim:end*engine.RowDim]); err != nil {
							t.Error(err)
							return
						}
					}
				}
				if _, err := f.client.Decode(ctx, &wire.DecodeRequest{SQ: 1, Heads: testHeads, IDs: []uint64{seq.ID}, Q: randomRows(r, testHeads)}); err != nil {
					t.Error(err)
					return
				}
				for layer := range testLayers {
					got, err := f.client.ReadKV(ctx, seq.ID, layer, 0, n)
					if err != nil {
						t.Error(err)
						return
					}
					if checksum(got) != sums[layer] {
						t.Errorf("sequence %d layer %d corrupted", seq.ID, layer)
					}
				}
				if err := f.client.FreeSequence(ctx, seq.ID); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if s := f.pool.Stats(); s.Active != 0 || s.ReservedPages != 0 {
		t.Errorf("pool not empty at the end: %+v", s)
	}
}

// FuzzHandlers sends arbitrary bodies to the binary endpoints: no answer
// may be a 5xx, and a sequence the fuzzer does not own stays intact.
func FuzzHandlers(f *testing.F) {
	r := rand.New(rand.NewPCG(4, 4))
	f.Add(uint8(0), wire.EncodeRows(wire.BF16, randomRows(r, 2)))
	f.Add(uint8(1), (&wire.DecodeRequest{SQ: 1, Heads: 16, IDs: []uint64{1}, Q: randomRows(r, 16)}).Marshal())
	f.Add(uint8(1), (&wire.DecodeRequest{SQ: 2, Heads: 16, IDs: []uint64{2}, Q: randomRows(r, 32)}).Marshal())
	f.Add(uint8(2), []byte(`{"maxTokens": 64}`))
	fx := newFixture(f, 8, 256)
	keep, keepRows := fx.filledSequence(f, r, 128, 100)
	spare, err := fx.client.CreateSequence(context.Background(), 128)
	if err != nil {
		f.Fatal(err)
	}
	h := fx.srv.Handler()
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		var path string
		switch which % 3 {
		case 0:
			path = "/v1/sequences/" + itoa(spare.ID) + "/layers/0/kv"
		case 1:
			path = "/v1/decode"
		default:
			path = "/v1/sequences"
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
		if rec.Code >= 500 {
			t.Fatalf("POST %s answered %d: %s", path, rec.Code, rec.Body)
		}
		if rec.Code == http.StatusCreated {
			// Give created sequences back so the pool does not fill up.
			var seq wire.Sequence
			if err := json.Unmarshal(rec.Body.Bytes(), &seq); err != nil {
				t.Fatalf("201 with an unreadable body: %v", err)
			}
			if err := fx.pool.Free(kvcache.SeqID(seq.ID)); err != nil {
				t.Fatal(err)
			}
		}
		got, err := fx.pool.Read(kvcache.SeqID(keep), 1, 0, 100)
		if err != nil || checksum(got) != checksum(keepRows[1]) {
			t.Fatalf("kept sequence disturbed (%v)", err)
		}
	})
}
