package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// CreateSequenceRequest admits a sequence (POST /v1/sequences).
type CreateSequenceRequest struct {
	// MaxTokens is the longest the sequence will grow; its pages are
	// reserved up front.
	MaxTokens int64 `json:"maxTokens"`
	// WaitSeconds, when positive, waits up to that long for room instead of
	// failing at once with 429.
	WaitSeconds float64 `json:"waitSeconds,omitempty"`
}

// MaxWaitSeconds bounds CreateSequenceRequest.WaitSeconds.
const MaxWaitSeconds = 300

// Validate checks the request's own fields; the context limit is the
// server's to check.
func (r *CreateSequenceRequest) Validate() error {
	if r.MaxTokens < 1 {
		return fmt.Errorf("maxTokens must be at least 1, got %d", r.MaxTokens)
	}
	if r.WaitSeconds < 0 || r.WaitSeconds > MaxWaitSeconds || r.WaitSeconds != r.WaitSeconds {
		return fmt.Errorf("waitSeconds must be in [0, %d], got %g", MaxWaitSeconds, r.WaitSeconds)
	}
	return nil
}

// Sequence describes an admitted sequence.
type Sequence struct {
	ID        uint64 `json:"id"`
	MaxTokens int64  `json:"maxTokens"`
	// ReservedTokens is MaxTokens rounded up to whole pages.
	ReservedTokens int64 `json:"reservedTokens"`
	// Lengths is the tokens each layer holds (GET only).
	Lengths []int32 `json:"lengths,omitempty"`
}

// AppendResult is the layer's length after an append.
type AppendResult struct {
	Length int `json:"length"`
}

// Capacity is the worker's pool and model (GET /v1/capacity).
type Capacity struct {
	ModelName    string  `json:"modelName,omitempty"`
	Device       string  `json:"device"`
	GPUProduct   string  `json:"gpuProduct,omitempty"`
	Layers       int     `json:"layers"`
	Heads        int     `json:"heads"`
	SoftmaxScale float32 `json:"softmaxScale"`
	PageSize     int     `json:"pageSize"`
	// Pages is the pages per layer (vLLM's num_gpu_blocks).
	Pages          int   `json:"pages"`
	CapacityTokens int64 `json:"capacityTokens"`
	// MaxContextLength is the longest sequence admitted.
	MaxContextLength int64 `json:"maxContextLength"`
	// UsedTokens is reserved by admitted sequences (whole pages).
	UsedTokens int64 `json:"usedTokens"`
	// TakenTokens is pages holding data, x page size.
	TakenTokens     int64 `json:"takenTokens"`
	ActiveSequences int   `json:"activeSequences"`
	WaitingRequests int64 `json:"waitingRequests"`
	// RefusedTotal counts creations refused for lack of room.
	RefusedTotal int64 `json:"refusedTotal"`
	Ready        bool  `json:"ready"`
	Draining     bool  `json:"draining"`
}

// Error is every error response's body.
type Error struct {
	Error string `json:"error"`
}

// MaxJSONBytes bounds a JSON request body.
const MaxJSONBytes = 4 << 10

// DecodeJSON strictly decodes one JSON value: unknown fields, trailing data
// and oversize bodies are errors.
func DecodeJSON(r io.Reader, v any) error {
	body, err := io.ReadAll(io.LimitReader(r, MaxJSONBytes+1))
	if err != nil {
		return fmt.Errorf("reading body: %w", err)
	}
	if len(body) > MaxJSONBytes {
		return malformed("JSON body exceeds %d bytes", MaxJSONBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return malformed("JSON body: %v", err)
	}
	if dec.More() {
		return malformed("JSON body has data after its value")
	}
	return nil
}
