//go:build cuda

package app

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/capacity"
	"github.com/mla-operator/mla-operator/internal/model"
	"github.com/mla-operator/mla-operator/worker/bf16"
	workerclient "github.com/mla-operator/mla-operator/worker/client"
	"github.com/mla-operator/mla-operator/worker/engine"
	_ "github.com/mla-operator/mla-operator/worker/engine/cuda"
	"github.com/mla-operator/mla-operator/worker/gpu"
	"github.com/mla-operator/mla-operator/worker/kvcache"
	"github.com/mla-operator/mla-operator/worker/wire"
)

// These run on a GPU machine: go test -c -tags cuda ./worker/app, then run
// the binary there. They start a whole worker with --device auto and check
// that it found the GPU, sized its pool from the driver's numbers, and that
// decode steps through its API match the CPU reference engine.

func startGPUWorker(t testing.TB) (*workerclient.Client, gpu.Device) {
	t.Helper()
	inv, err := gpu.Discover(nvml.New())
	if err != nil {
		t.Fatalf("NVML on a GPU machine: %v", err)
	}
	s := testSettings(t, map[string]string{
		v1alpha1.EnvDevice: "auto", v1alpha1.EnvSimulatedGPU: "", v1alpha1.EnvPodName: "",
		v1alpha1.EnvAttentionHeads: "128", v1alpha1.EnvGPUMemoryUtilization: "0.25",
		v1alpha1.EnvContextLength: "8192",
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, terminate := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, s, Deps{Listener: ln, Logger: slog.New(slog.NewJSONHandler(os.Stderr, nil))})
	}()
	t.Cleanup(func() {
		terminate()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	c := workerclient.New("http://"+ln.Addr().String(), nil)
	deadline := time.Now().Add(2 * time.Minute)
	for c.Ready(context.Background()) != nil {
		select {
		case err := <-done:
			t.Fatalf("worker exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("GPU worker not ready within 2 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return c, inv.Devices[0]
}

func TestGPUWorkerDecodeMatchesCPUEngine(t *testing.T) {
	c, dev := startGPUWorker(t)
	ctx := context.Background()
	capy, err := c.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := capacity.Config{Model: capacityModel(2, 128), DType: "bf16", PageSize: 64, GPUMemoryUtilization: 0.25, GPUs: 1}
	want := cfg.Estimate(capacity.GPU{Product: dev.Product(), MemoryBytes: int64(dev.TotalBytes), InUseBytes: dev.InUseBytes()})
	t.Logf("GPU %s (%s), %.1f GiB, %.2f GiB in use before start; worker capacity %d tokens, model says %d",
		dev.Name, dev.UUID, float64(dev.TotalBytes)/(1<<30), float64(dev.InUseBytes())/(1<<30), capy.CapacityTokens, want.Tokens)
	if capy.Device != "cuda" || capy.GPUProduct != dev.Product() {
		t.Fatalf("worker runs on %q %q, want cuda on %q", capy.Device, capy.GPUProduct, dev.Product())
	}
	if capy.CapacityTokens != want.Tokens {
		t.Errorf("capacity %d tokens, capacity model on the driver's numbers says %d", capy.CapacityTokens, want.Tokens)
	}

	// The same sequences on the GPU worker (over HTTP) and in a CPU pool.
	cpu := engine.NewCPU(0)
	cache, err := cpu.NewCache(engine.CacheShape{Layers: 2, Pages: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	ref, err := kvcache.New(cache, 8192)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(11, 12))
	var ids []uint64
	var refIDs []kvcache.SeqID
	for _, n := range []int{1, 63, 64, 65, 700, 2048, 3001, 129} {
		seq, err := c.CreateSequence(ctx, int64(n))
		if err != nil {
			t.Fatal(err)
		}
		rid, err := ref.Create(int64(n))
		if err != nil {
			t.Fatal(err)
		}
		rows := make([]uint16, n*engine.RowDim)
		for i := range rows {
			rows[i] = bf16.FromFloat32(r.Float32()*2 - 1)
		}
		if _, err := c.AppendKV(ctx, seq.ID, 1, rows); err != nil {
			t.Fatal(err)
		}
		if _, err := ref.Append(rid, 1, rows); err != nil {
			t.Fatal(err)
		}
		ids, refIDs = append(ids, seq.ID), append(refIDs, rid)
	}
	for _, tc := range []struct{ sq, heads, from int }{{1, 128, 0}, {1, 16, 0}, {1, 64, 1}, {2, 128, 1}} {
		t.Run(fmt.Sprintf("sq=%d/heads=%d", tc.sq, tc.heads), func(t *testing.T) {
			bids, brefs := ids[tc.from:], refIDs[tc.from:] // s_q = 2 needs two tokens
			q := make([]uint16, len(bids)*tc.sq*tc.heads*engine.RowDim)
			for i := range q {
				q[i] = bf16.FromFloat32(r.Float32()*2 - 1)
			}
			got, err := c.Decode(ctx, &wire.DecodeRequest{Layer: 1, SQ: tc.sq, Heads: tc.heads, IDs: bids, Q: q})
			if err != nil {
				t.Fatal(err)
			}
			step := &kvcache.DecodeStep{Layer: 1, IDs: brefs, SQ: tc.sq, Heads: tc.heads, Scale: capy.SoftmaxScale, Q: q,
				Out: make([]uint16, len(got.Out)), LSE: make([]float32, len(got.LSE))}
			if err := ref.Decode(ctx, cpu, step); err != nil {
				t.Fatal(err)
			}
			worstRMS, worstMax, worstLSE := 0.0, 0.0, 0.0
			for row := 0; row < len(step.Out)/engine.LatentDim; row++ {
				i := row * engine.LatentDim
				rms, mx := rowError(got.Out[i:i+engine.LatentDim], step.Out[i:i+engine.LatentDim])
				worstRMS, worstMax = math.Max(worstRMS, rms), math.Max(worstMax, mx)
			}
			for i := range step.LSE {
				worstLSE = math.Max(worstLSE, math.Abs(float64(got.LSE[i]-step.LSE[i])))
			}
			t.Logf("worst head: relative RMS error %.2g, relative max error %.2g; max |lse gpu - cpu| %.2g", worstRMS, worstMax, worstLSE)
			if worstRMS > maxRelRMS || worstMax > maxRelMax || !(worstLSE <= 1e-3) {
				t.Error("GPU worker's decode differs from the CPU engine beyond bf16 rounding")
			}
		})
	}
}

// BenchmarkGPUWorkerDecodeStep is one decode step of one layer through the
// API of a GPU worker (HTTP over loopback, the Go client, bf16 frames):
// sequences of 1,024 tokens, 128 heads, s_q = 1.
func BenchmarkGPUWorkerDecodeStep(b *testing.B) {
	c, _ := startGPUWorker(b)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 2))
	const n, heads = 1024, 128
	rows := make([]uint16, n*engine.RowDim)
	for i := range rows {
		rows[i] = bf16.FromFloat32(r.Float32()*2 - 1)
	}
	for _, batch := range []int{1, 64} {
		ids := make([]uint64, batch)
		for i := range ids {
			seq, err := c.CreateSequence(ctx, n)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.AppendKV(ctx, seq.ID, 0, rows); err != nil {
				b.Fatal(err)
			}
			ids[i] = seq.ID
		}
		q := make([]uint16, batch*heads*engine.RowDim)
		for i := range q {
			q[i] = bf16.FromFloat32(r.Float32()*2 - 1)
		}
		req := &wire.DecodeRequest{Layer: 0, SQ: 1, Heads: heads, IDs: ids, Q: q}
		b.Run(fmt.Sprintf("batch=%d/heads=%d/len=%d", batch, heads, n), func(b *testing.B) {
			for b.Loop() {
				if _, err := c.Decode(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func capacityModel(layers, heads int) model.Model {
	return model.Model{Geometry: model.Geometry{Layers: layers, KVLoRARank: 512, QKRopeHeadDim: 64, QKNopeHeadDim: 128, AttentionHeads: heads}}
}
