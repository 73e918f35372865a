package capacity

import (
	"errors"
	"strings"
	"testing"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/model"
)

// GPU memory as GPU Feature Discovery labels it (MiB).
var (
	h200 = GPU{Product: "NVIDIA-H200", MemoryBytes: 143771 * MiB}
	h100 = GPU{Product: "NVIDIA-H100-80GB-HBM3", MemoryBytes: 81559 * MiB}
	a100 = GPU{Product: "NVIDIA-A100-SXM4-40GB", MemoryBytes: 40960 * MiB}
	l4   = GPU{Product: "NVIDIA-L4", MemoryBytes: 23034 * MiB}
)

func presetConfig(p v1alpha1.ModelPreset, gpus int) Config {
	pr := model.Presets[p]
	return Config{
		Model:                model.Model{Name: string(p), Geometry: pr.Geometry, WeightsBytes: pr.CheckpointBytes},
		DType:                v1alpha1.KVCacheBF16,
		PageSize:             64,
		GPUMemoryUtilization: 0.9,
		ReserveBytes:         2 * GiB,
		GPUs:                 gpus,
	}
}

func TestBytesPerToken(t *testing.T) {
	cases := []struct {
		preset          v1alpha1.ModelPreset
		dtype           v1alpha1.KVCacheDType
		perLayer, total int64
	}{
		{v1alpha1.PresetDeepSeekV3, v1alpha1.KVCacheBF16, 1152, 70272},
		{v1alpha1.PresetDeepSeekV2Lite, v1alpha1.KVCacheBF16, 1152, 31104},
		{v1alpha1.PresetDeepSeekV2, v1alpha1.KVCacheBF16, 1152, 69120},
		{v1alpha1.PresetDeepSeekV3, v1alpha1.KVCacheFP8, 656, 61 * 656},
	}
	for _, c := range cases {
		cfg := presetConfig(c.preset, 1)
		cfg.DType = c.dtype
		if got := cfg.BytesPerTokenLayer(); got != c.perLayer {
			t.Errorf("%s/%s: %d bytes per token and layer, want %d", c.preset, c.dtype, got, c.perLayer)
		}
		if got := cfg.BytesPerToken(); got != c.total {
			t.Errorf("%s/%s: %d bytes per token, want %d", c.preset, c.dtype, got, c.total)
		}
	}
}

func TestSequenceBytes(t *testing.T) {
	v3 := presetConfig(v1alpha1.PresetDeepSeekV3, 1)
	// 163,840 tokens = 2,560 pages in each of 61 layers: 10.72 GiB.
	if got, want := v3.SequenceBytes(163840), int64(11_513_364_480); got != want {
		t.Fatalf("V3 163840 tokens: %d bytes, want %d", got, want)
	}
	if got := float64(v3.SequenceBytes(163840)) / GiB; got < 10.72 || got > 10.73 {
		t.Errorf("V3 163840 tokens: %.4f GiB, want 10.72", got)
	}
	// Partial pages count whole.
	if v3.SequenceBytes(1) != v3.SequenceBytes(64) || v3.SequenceBytes(65) != 2*v3.SequenceBytes(64) {
		t.Errorf("sequence bytes must round up to whole pages")
	}
}

func TestEstimate(t *testing.T) {
	cases := []struct {
		name       string
		cfg        Config
		gpu        GPU
		wantTokens int64
	}{
		// floor(81559 MiB x 0.9) - 31.41 GB - 2 GiB = 43,408,276,889 B;
		// / (27 layers x 64 x 1152) = 21,806 pages.
		{"V2-Lite on H100", presetConfig(v1alpha1.PresetDeepSeekV2Lite, 1), h100, 21806 * 64},
		// 64 tokens short of 163,840: an A100 40GB cannot hold V2-Lite's
		// full context.
		{"V2-Lite on A100 40GB", presetConfig(v1alpha1.PresetDeepSeekV2Lite, 1), a100, 163776},
		// The weights alone exceed 24 GB x 0.9.
		{"V2-Lite on L4", presetConfig(v1alpha1.PresetDeepSeekV2Lite, 1), l4, 0},
		// FP8 checkpoint over 8 GPUs: 86.07 GB per GPU; the latent cache is
		// replicated on each rank.
		{"V3 on 8x H200", presetConfig(v1alpha1.PresetDeepSeekV3, 8), h200, 10552 * 64},
		{"V3 on 8x H100", presetConfig(v1alpha1.PresetDeepSeekV3, 8), h100, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := c.cfg.Estimate(c.gpu)
			if e.Tokens != c.wantTokens {
				t.Fatalf("tokens = %d, want %d (available %d bytes)", e.Tokens, c.wantTokens, e.AvailableBytes)
			}
			if e.Tokens%64 != 0 {
				t.Errorf("tokens %d not whole pages", e.Tokens)
			}
			if e.PoolBytes > e.AvailableBytes && e.Tokens > 0 {
				t.Errorf("pool %d exceeds available %d", e.PoolBytes, e.AvailableBytes)
			}
		})
	}
}

func TestEstimateInUseMemoryShrinksPool(t *testing.T) {
	cfg := presetConfig(v1alpha1.PresetDeepSeekV2Lite, 1)
	free := cfg.Estimate(h100)
	busy := h100
	busy.InUseBytes = 4 * GiB
	used := cfg.Estimate(busy)
	if used.Tokens >= free.Tokens {
		t.Fatalf("memory in use must shrink the pool: %d >= %d", used.Tokens, free.Tokens)
	}
	if lost := (free.Tokens - used.Tokens) * cfg.BytesPerToken(); lost < 4*GiB-int64(cfg.Model.Layers)*cfg.PageBytes() || lost > 4*GiB+int64(cfg.Model.Layers)*cfg.PageBytes() {
		t.Errorf("lost %d bytes of pool for 4 GiB in use", lost)
	}
}

func TestCheckContext(t *testing.T) {
	v3 := presetConfig(v1alpha1.PresetDeepSeekV3, 8)
	e := v3.Estimate(h200)
	if err := v3.CheckContext(e, 163840); err != nil {
		t.Fatalf("V3 163840 on 8x H200 should fit: %v", err)
	}
	v2 := presetConfig(v1alpha1.PresetDeepSeekV2Lite, 1)
	err := v2.CheckContext(v2.Estimate(a100), 163840)
	var ce *ContextError
	if !errors.As(err, &ce) {
		t.Fatalf("want ContextError, got %v", err)
	}
	if ce.MaxContext != 163776 {
		t.Errorf("longest context %d, want 163776", ce.MaxContext)
	}
	for _, want := range []string{"163840 tokens needs 4.75 GiB", "the longest context that fits is 163776 tokens", "NVIDIA-A100-SXM4-40GB"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}
	err = v2.CheckContext(v2.Estimate(l4), 4096)
	if err == nil || !strings.Contains(err.Error(), "no memory is left for the KV cache") {
		t.Errorf("L4: want a weights-do-not-fit message, got %v", err)
	}
}

func TestFromSpecDefaults(t *testing.T) {
	p := v1alpha1.PresetDeepSeekV2Lite
	cfg, err := FromSpec(&v1alpha1.MLAServiceSpec{Model: v1alpha1.ModelSpec{Name: "m", Preset: &p}, ContextLength: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PageSize != 64 || cfg.GPUs != 1 || cfg.GPUMemoryUtilization != 0.9 || cfg.ReserveBytes != DefaultReserveBytes || cfg.DType != v1alpha1.KVCacheBF16 {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}
