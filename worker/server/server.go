// Package server is the worker's HTTP serving API over a KV pool and a
// decode engine: sequences, KV appends, batched decode steps, capacity,
// health and metrics. docs/worker-api.md is its reference.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mla-operator/mla-operator/worker/engine"
	"github.com/mla-operator/mla-operator/worker/kvcache"
	"github.com/mla-operator/mla-operator/worker/wire"
)

// Config is what a Server serves.
type Config struct {
	Pool   *kvcache.Pool
	Engine engine.Engine
	// ModelName labels the vLLM-compatible metrics.
	ModelName string
	// Heads and SoftmaxScale are the model's; a decode request that gives
	// scale 0 gets SoftmaxScale.
	Heads        int
	SoftmaxScale float32
	// KVDType labels vllm:cache_config_info ("bf16").
	KVDType    string
	Device     string
	GPUProduct string
	Logger     *slog.Logger
	// Registry receives the metrics; nil makes a fresh one.
	Registry *prometheus.Registry
	// RetryAfter is what 429 and 503 answers advise; default 1 s.
	RetryAfter time.Duration
	// MaxBodyBytes bounds binary request bodies; default 64 MiB.
	MaxBodyBytes int64
}

// Server serves one worker's pool.
type Server struct {
	cfg      Config
	log      *slog.Logger
	metrics  *metrics
	draining atomic.Bool
	handler  http.Handler
}

// New makes a server.
func New(cfg Config) (*Server, error) {
	if cfg.Pool == nil || cfg.Engine == nil {
		return nil, fmt.Errorf("server needs a pool and an engine")
	}
	if s := float64(cfg.SoftmaxScale); !(s > 0) || math.IsInf(s, 0) {
		return nil, fmt.Errorf("softmax scale must be positive and finite, got %g", cfg.SoftmaxScale)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = time.Second
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 20
	}
	if cfg.KVDType == "" {
		cfg.KVDType = "bf16"
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	s.metrics = newMetrics(cfg.Registry, newPoolCollector(cfg.Pool, cfg.ModelName, cfg.KVDType, s.draining.Load))

	mux := http.NewServeMux()
	route := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, s.instrument(pattern, h)) }
	route("POST /v1/sequences", s.createSequence)
	route("GET /v1/sequences/{id}", s.getSequence)
	route("DELETE /v1/sequences/{id}", s.freeSequence)
	route("POST /v1/sequences/{id}/layers/{layer}/kv", s.appendKV)
	route("GET /v1/sequences/{id}/layers/{layer}/kv", s.readKV)
	route("POST /v1/decode", s.decode)
	route("GET /v1/capacity", s.capacity)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", s.ready)
	mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	s.handler = mux
	return s, nil
}

// Handler is the API's root handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Drain stops admitting: new sequences get 503 and /readyz fails, while
// existing sequences keep being served.
func (s *Server) Drain() {
	if !s.draining.Swap(true) {
		s.cfg.Pool.StopAdmitting()
	}
}

// Draining says whether Drain was called.
func (s *Server) Draining() bool { return s.draining.Load() }

// Capacity is the pool and model as the capacity endpoint reports them.
func (s *Server) Capacity() wire.Capacity {
	st := s.cfg.Pool.Stats()
	draining := s.draining.Load()
	return wire.Capacity{
		ModelName: s.cfg.ModelName, Device: s.cfg.Device, GPUProduct: s.cfg.GPUProduct,
		Layers: st.Layers, Heads: s.cfg.Heads, SoftmaxScale: s.cfg.SoftmaxScale,
		PageSize: engine.PageSize, Pages: st.Pages, CapacityTokens: st.CapacityTokens,
		MaxContextLength: st.ContextLimit, UsedTokens: st.UsedTokens, TakenTokens: int64(st.TakenPages) * engine.PageSize,
		ActiveSequences: st.Active, WaitingRequests: st.Waiting, RefusedTotal: st.Refused,
		Ready: st.Admitting && !draining, Draining: draining,
	}
}

// statusRecorder remembers the status code for the latency histogram.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *Server) instrument(route string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h(rec, r)
		s.metrics.requests.WithLabelValues(route, strconv.Itoa(rec.code)).Observe(time.Since(start).Seconds())
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		// The status is out; all that is left is to drop the connection.
		panic(http.ErrAbortHandler)
	}
}

func (s *Server) fail(w http.ResponseWriter, code int, err error) {
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(s.cfg.RetryAfter.Seconds()))))
	}
	if code >= 500 {
		s.log.Error("request failed", "code", code, "err", err)
	}
	writeJSON(w, code, wire.Error{Error: err.Error()})
}

// failPool maps the pool's errors to status codes.
func (s *Server) failPool(w http.ResponseWriter, err error) {
	var tooLong *kvcache.TooLongError
	var full *kvcache.FullError
	switch {
	case errors.As(err, &full):
		s.fail(w, http.StatusTooManyRequests, err)
	case errors.Is(err, kvcache.ErrNotAdmitting):
		s.fail(w, http.StatusServiceUnavailable, err)
	case errors.Is(err, kvcache.ErrNotFound):
		s.fail(w, http.StatusNotFound, err)
	case errors.As(err, &tooLong), errors.Is(err, wire.ErrMalformed):
		s.fail(w, http.StatusBadRequest, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		s.fail(w, http.StatusServiceUnavailable, err)
	default:
		// Everything else the pool and engine refuse is about the request:
		// wrong layer, overflow of the declared length, bad shapes.
		s.fail(w, http.StatusBadRequest, err)
	}
}

func pathSeq(r *http.Request) (kvcache.SeqID, error) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("%w: sequence id %q is not a positive integer", wire.ErrMalformed, r.PathValue("id"))
	}
	return kvcache.SeqID(id), nil
}

// pathSeqLayer reads the sequence and layer of a KV-row path.
func pathSeqLayer(r *http.Request) (kvcache.SeqID, int, error) {
	id, err := pathSeq(r)
	if err != nil {
		return 0, 0, err
	}
	layer, err := pathLayer(r)
	return id, layer, err
}

func pathLayer(r *http.Request) (int, error) {
	l, err := strconv.ParseUint(r.PathValue("layer"), 10, 16)
	if err != nil {
		return 0, fmt.Errorf("%w: layer %q is not a small non-negative integer", wire.ErrMalformed, r.PathValue("layer"))
	}
	return int(l), nil
}

func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := readAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes), r.ContentLength, s.cfg.MaxBodyBytes)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.fail(w, http.StatusRequestEntityTooLarge, fmt.Errorf("body exceeds %d bytes", tooBig.Limit))
		} else {
			s.fail(w, http.StatusBadRequest, fmt.Errorf("reading body: %w", err))
		}
		return nil, false
	}
	return body, true
}

// readAll reads a body in one allocation when its length is declared and
// within limit (tensor bodies run to megabytes); rd enforces the limit.
func readAll(rd io.Reader, declared, limit int64) ([]byte, error) {
	if declared <= 0 || declared > limit {
		return io.ReadAll(rd)
	}
	buf := make([]byte, declared)
	if _, err := io.ReadFull(rd, buf); err != nil {
		return nil, err
	}
	// A body longer than declared is the transport's to reject; one byte
	// more here would mean a broken request.
	return buf, nil
}

func writeFrame(w http.ResponseWriter, frame []byte) {
	w.Header().Set("Content-Type", wire.ContentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(frame)))
	w.Write(frame)
}

func (s *Server) createSequence(w http.ResponseWriter, r *http.Request) {
	var req wire.CreateSequenceRequest
	if err := wire.DecodeJSON(r.Body, &req); err != nil {
		s.fail(w, http.StatusBadRequest, err)
		return
	}
	if err := req.Validate(); err != nil {
		s.fail(w, http.StatusBadRequest, err)
		return
	}
	if s.draining.Load() {
		s.fail(w, http.StatusServiceUnavailable, kvcache.ErrNotAdmitting)
		return
	}
	var id kvcache.SeqID
	var err error
	if req.WaitSeconds > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(req.WaitSeconds*float64(time.Second)))
		id, err = s.cfg.Pool.CreateWait(ctx, req.MaxTokens)
		cancel()
	} else {
		id, err = s.cfg.Pool.Create(req.MaxTokens)
	}
	if err != nil {
		s.failPool(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, wire.Sequence{ID: uint64(id), MaxTokens: req.MaxTokens,
		ReservedTokens: (req.MaxTokens + engine.PageSize - 1) / engine.PageSize * engine.PageSize})
}

func (s *Server) getSequence(w http.ResponseWriter, r *http.Request) {
	id, err := pathSeq(r)
	if err != nil {
		s.fail(w, http.StatusBadRequest, err)
		return
	}
	info, err := s.cfg.Pool.Info(id)
	if err != nil {
		s.failPool(w, err)
		return
	}
	writeJSON(w, http.StatusOK, wire.Sequence{ID: uint64(info.ID), MaxTokens: info.MaxTokens,
		ReservedTokens: info.ReservedTokens, Lengths: info.Lengths})
}

func (s *Server) freeSequence(w http.ResponseWriter, r *http.Request) {
	id, err := pathSeq(r)
	if err != nil {
		s.fail(w, http.StatusBadRequest, err)
		return
	}
	if err := s.cfg.Pool.Free(id); err != nil {
		s.failPool(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) appendKV(w http.ResponseWriter, r *http.Request) {
	id, layer, err := pathSeqLayer(r)
	if err != nil {
		s.fail(w, http.StatusBadRequest, err)
		return
	}
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	rows, err := wire.DecodeRows(body)
	if err != nil {
		s.fail(w, http.StatusBadRequest, err)
		return
	}
	n, err := s.cfg.Pool.Append(id, layer, rows)
	if err != nil {
		s.failPool(w, err)
		return
	}
	writeJSON(w, http.StatusOK, wire.AppendResult{Length: n})
}

func (s *Server) readKV(w http.ResponseWriter, r *http.Request) {
	id, layer, err := pathSeqLayer(r)
	if err != nil {
		s.fail(w, http.StatusBadRequest, err)
		return
	}
	q := r.URL.Query()
	from, err1 := strconv.ParseUint(q.Get("from"), 10, 31)
	count, err2 := strconv.ParseUint(q.Get("count"), 10, 31)
	if err1 != nil || err2 != nil || count < 1 || count > wire.MaxRows {
		s.fail(w, http.StatusBadRequest, fmt.Errorf("%w: from and count must be integers, count in [1, %d]", wire.ErrMalformed, wire.MaxRows))
		return
	}
	rows, err := s.cfg.Pool.Read(id, layer, int(from), int(count))
	if err != nil {
		s.failPool(w, err)
		return
	}
	writeFrame(w, wire.EncodeRows(wire.BF16, rows))
}

func (s *Server) decode(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	req, err := wire.UnmarshalDecodeRequest(body)
	if err != nil {
		s.fail(w, http.StatusBadRequest, err)
		return
	}
	scale := req.Scale
	if scale == 0 {
		scale = s.cfg.SoftmaxScale
	}
	ids := make([]kvcache.SeqID, len(req.IDs))
	for i, id := range req.IDs {
		ids[i] = kvcache.SeqID(id)
	}
	batch := len(ids)
	step := &kvcache.DecodeStep{Layer: req.Layer, IDs: ids, SQ: req.SQ, Heads: req.Heads, Scale: scale, Q: req.Q}
	// A bf16 answer is written by the engine straight into its frame.
	frame, out, lse, inPlace := []byte(nil), []uint16(nil), []float32(nil), false
	if req.OutDType == wire.BF16 {
		frame, out, lse, inPlace = wire.ResponseFrame(batch, req.SQ, req.Heads)
	}
	if !inPlace {
		out = make([]uint16, batch*req.SQ*req.Heads*engine.LatentDim)
		lse = make([]float32, batch*req.Heads*req.SQ)
	}
	step.Out, step.LSE = out, lse
	start := time.Now()
	if err := s.cfg.Pool.Decode(r.Context(), s.cfg.Engine, step); err != nil {
		s.failPool(w, err)
		return
	}
	s.metrics.decode.WithLabelValues(s.cfg.Engine.Name()).Observe(time.Since(start).Seconds())
	s.metrics.batch.Observe(float64(batch))
	if !inPlace {
		frame = (&wire.DecodeResponse{Batch: batch, SQ: req.SQ, Heads: req.Heads, OutDType: req.OutDType, Out: out, LSE: lse}).Marshal()
	}
	writeFrame(w, frame)
}

func (s *Server) capacity(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Capacity())
}

func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	if s.draining.Load() {
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	}
	io.WriteString(w, "ok\n")
}
