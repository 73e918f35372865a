package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/mla-operator/mla-operator/worker/wire"
)

func TestErrorsCarryStatusMessageAndRetryAfter(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/sequences":
			w.Header().Set("Retry-After", "3")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write([]byte(`{"error":"KV cache full"}`))
		case "/readyz":
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case "/v1/decode":
			w.Header().Set("Content-Type", wire.ContentType)
			w.Write([]byte("MLAO not a frame"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer hs.Close()
	c := New(hs.URL+"/", hs.Client())
	ctx := context.Background()

	_, err := c.CreateSequence(ctx, 10)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || !IsFull(err) || apiErr.Message != "KV cache full" || apiErr.RetryAfter != 3*time.Second {
		t.Fatalf("429 = %#v (%v)", apiErr, err)
	}
	if err := c.Ready(ctx); !IsDraining(err) || !errors.As(err, &apiErr) || apiErr.Message != "draining" {
		t.Fatalf("503 with a plain-text body = %v", err)
	}
	if err := c.FreeSequence(ctx, 4); !IsNotFound(err) || IsBadRequest(err) {
		t.Fatalf("404 = %v", err)
	}
	if _, err := c.Decode(ctx, &wire.DecodeRequest{SQ: 1, Heads: 16, IDs: []uint64{1}, Q: make([]uint16, 16*576)}); !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("garbage decode response = %v, want ErrMalformed", err)
	}
}

func TestTransportErrorsAreNotAPIErrors(t *testing.T) {
	hs := httptest.NewServer(http.NotFoundHandler())
	url := hs.URL
	hs.Close() // nothing listens there any more
	_, err := New(url, nil).Capacity(context.Background())
	var apiErr *APIError
	if err == nil || errors.As(err, &apiErr) {
		t.Fatalf("request to a closed port = %v, want a transport error", err)
	}
}
