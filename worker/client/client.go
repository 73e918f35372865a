// Package client is the Go client of a worker's serving API
// (docs/worker-api.md). It speaks the binary frames of package wire on the
// hot path and JSON on the control endpoints.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mla-operator/mla-operator/worker/wire"
)

// Client talks to one worker.
type Client struct {
	base string
	hc   *http.Client
}

// New makes a client for the worker at baseURL ("http://10.0.0.7:8080").
// A nil hc uses http.DefaultClient.
func New(baseURL string, hc *http.Client) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), hc: hc}
}

// APIError is a non-2xx answer.
type APIError struct {
	StatusCode int
	Message    string
	// RetryAfter is the worker's advice on 429 and 503.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	return fmt.Sprintf("worker answered %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// IsFull says whether err is the worker's KV cache being full (429).
func IsFull(err error) bool { return statusIs(err, http.StatusTooManyRequests) }

// IsDraining says whether err is the worker refusing new sequences because
// it is shutting down (503).
func IsDraining(err error) bool { return statusIs(err, http.StatusServiceUnavailable) }

// IsNotFound says whether err is an unknown sequence (404).
func IsNotFound(err error) bool { return statusIs(err, http.StatusNotFound) }

// IsBadRequest says whether err is a request the worker refused as
// invalid (400), such as a sequence longer than its context limit.
func IsBadRequest(err error) bool { return statusIs(err, http.StatusBadRequest) }

func statusIs(err error, code int) bool {
	var e *APIError
	return errors.As(err, &e) && e.StatusCode == code
}

// maxResponseBytes bounds what the client reads: the largest decode
// response (4,096 sequences x 2 x 128 heads x 512 fp32) is 2 GiB; bf16
// frames of realistic batches are megabytes.
const maxResponseBytes = 4 << 30

func (c *Client) do(ctx context.Context, method, path, contentType string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	var data []byte
	if n := resp.ContentLength; n > 0 && n <= maxResponseBytes {
		data = make([]byte, n)
		_, err = io.ReadFull(resp.Body, data)
	} else {
		data, err = io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading response: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &APIError{StatusCode: resp.StatusCode, Message: strings.TrimSpace(string(data))}
		var body wire.Error
		if json.Unmarshal(data, &body) == nil && body.Error != "" {
			e.Message = body.Error
		}
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
			e.RetryAfter = time.Duration(s) * time.Second
		}
		return nil, fmt.Errorf("%s %s: %w", method, path, e)
	}
	return data, nil
}

func (c *Client) doJSON(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	var ct string
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
		ct = "application/json"
	}
	data, err := c.do(ctx, method, path, ct, body)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decoding response: %w", method, path, err)
	}
	return nil
}

// CreateSequence admits a sequence of at most maxTokens tokens; its pages
// are reserved at once. A full pool fails with IsFull.
func (c *Client) CreateSequence(ctx context.Context, maxTokens int64) (wire.Sequence, error) {
	return c.CreateSequenceWait(ctx, maxTokens, 0)
}

// CreateSequenceWait is CreateSequence that waits up to wait for room
// before giving up with IsFull.
func (c *Client) CreateSequenceWait(ctx context.Context, maxTokens int64, wait time.Duration) (wire.Sequence, error) {
	var seq wire.Sequence
	err := c.doJSON(ctx, http.MethodPost, "/v1/sequences",
		wire.CreateSequenceRequest{MaxTokens: maxTokens, WaitSeconds: wait.Seconds()}, &seq)
	return seq, err
}

// Sequence describes a sequence, with the tokens each layer holds.
func (c *Client) Sequence(ctx context.Context, id uint64) (wire.Sequence, error) {
	var seq wire.Sequence
	err := c.doJSON(ctx, http.MethodGet, "/v1/sequences/"+strconv.FormatUint(id, 10), nil, &seq)
	return seq, err
}

// FreeSequence ends a sequence and gives its pages back.
func (c *Client) FreeSequence(ctx context.Context, id uint64) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/sequences/"+strconv.FormatUint(id, 10), "", nil)
	return err
}

func kvPath(id uint64, layer int) string {
	return "/v1/sequences/" + strconv.FormatUint(id, 10) + "/layers/" + strconv.Itoa(layer) + "/kv"
}

// AppendKV appends bf16 latent rows (a multiple of 576 values) to a
// sequence's layer and returns the layer's new length.
func (c *Client) AppendKV(ctx context.Context, id uint64, layer int, rows []uint16) (int, error) {
	return c.appendFrame(ctx, id, layer, wire.EncodeRows(wire.BF16, rows))
}

// AppendKVFloat32 is AppendKV with fp32 rows, which the worker rounds to
// bf16 (nearest, ties to even).
func (c *Client) AppendKVFloat32(ctx context.Context, id uint64, layer int, rows []float32) (int, error) {
	return c.appendFrame(ctx, id, layer, wire.EncodeRowsFloat32(rows))
}

func (c *Client) appendFrame(ctx context.Context, id uint64, layer int, frame []byte) (int, error) {
	data, err := c.do(ctx, http.MethodPost, kvPath(id, layer), wire.ContentType, frame)
	if err != nil {
		return 0, err
	}
	var res wire.AppendResult
	if err := json.Unmarshal(data, &res); err != nil {
		return 0, fmt.Errorf("append: decoding response: %w", err)
	}
	return res.Length, nil
}

// ReadKV reads tokens [from, from+count) of a sequence's layer as bf16.
func (c *Client) ReadKV(ctx context.Context, id uint64, layer, from, count int) ([]uint16, error) {
	q := url.Values{"from": {strconv.Itoa(from)}, "count": {strconv.Itoa(count)}}
	data, err := c.do(ctx, http.MethodGet, kvPath(id, layer)+"?"+q.Encode(), "", nil)
	if err != nil {
		return nil, err
	}
	rows, err := wire.DecodeRows(data)
	if err != nil {
		return nil, fmt.Errorf("read kv: %w", err)
	}
	return rows, nil
}

// Decode runs one batched decode step of one layer.
func (c *Client) Decode(ctx context.Context, req *wire.DecodeRequest) (*wire.DecodeResponse, error) {
	data, err := c.do(ctx, http.MethodPost, "/v1/decode", wire.ContentType, req.Marshal())
	if err != nil {
		return nil, err
	}
	resp, err := wire.UnmarshalDecodeResponse(data)
	if err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	return resp, nil
}

// Capacity reads the worker's pool, model and usage.
func (c *Client) Capacity(ctx context.Context) (wire.Capacity, error) {
	var capy wire.Capacity
	err := c.doJSON(ctx, http.MethodGet, "/v1/capacity", nil, &capy)
	return capy, err
}

// Ready returns nil when the worker admits sequences.
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodGet, "/readyz", "", nil)
	return err
}
