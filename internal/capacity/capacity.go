// Package capacity is the KV-cache capacity model that the operator and the
// worker share, so that where the operator places a worker and what the
// worker then reports agree to the token.
//
// A worker's pool is sized the way vLLM sizes its KV cache: a fraction of
// each GPU's memory, less the weights, a reserve for activations and
// workspace, and whatever else already uses the GPU. MLA keeps one latent KV
// head per layer, so tensor-parallel ranks cannot shard the cache by heads:
// each of a worker's GPUs holds the whole latent cache, and more GPUs per
// worker make room only by spreading the weights.
package capacity

import (
	"fmt"
	"math"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/model"
)

// GiB is 2^30 bytes.
const GiB = 1 << 30

// MiB is 2^20 bytes.
const MiB = 1 << 20

// Config is a worker's model and KV-cache settings.
type Config struct {
	Model model.Model
	// DType is the cache format.
	DType v1alpha1.KVCacheDType
	// PageSize is tokens per page (64).
	PageSize int
	// GPUMemoryUtilization is the fraction of each GPU the worker may use.
	GPUMemoryUtilization float64
	// ReserveBytes is kept per GPU for activations and workspace.
	ReserveBytes int64
	// GPUs is the GPUs per worker.
	GPUs int
}

// GPU is one GPU as the operator sees it on a node or the worker finds it.
type GPU struct {
	Product     string
	MemoryBytes int64
	// InUseBytes is memory something else already holds (the worker reads
	// it from the driver; the operator predicts 0).
	InUseBytes int64
}

// BytesPerTokenLayer is the cache row of one token in one layer: bf16 stores
// 576 values in 1,152 bytes; fp8 stores 512 fp8 latent values, one fp32 scale
// per 128 of them and 64 bf16 RoPE values, 656 bytes.
func (c Config) BytesPerTokenLayer() int64 {
	g := c.Model.Geometry
	switch c.DType {
	case v1alpha1.KVCacheFP8:
		return int64(g.KVLoRARank) + int64(g.KVLoRARank/128)*4 + int64(g.QKRopeHeadDim)*2
	default:
		return int64(g.RowWidth()) * 2
	}
}

// BytesPerToken is one token's cache across all layers (DeepSeek-V3 in bf16:
// 61 x 1,152 = 70,272 bytes).
func (c Config) BytesPerToken() int64 {
	return int64(c.Model.Layers) * c.BytesPerTokenLayer()
}

// PageBytes is one page of one layer.
func (c Config) PageBytes() int64 { return int64(c.PageSize) * c.BytesPerTokenLayer() }

// SequenceBytes is the cache one sequence of n tokens occupies: whole pages
// in every layer, as vLLM's start-up check counts it.
func (c Config) SequenceBytes(tokens int64) int64 {
	pages := (tokens + int64(c.PageSize) - 1) / int64(c.PageSize)
	return int64(c.Model.Layers) * pages * c.PageBytes()
}

// Validate reports settings the model cannot be sized with.
func (c Config) Validate() error {
	switch {
	case c.PageSize <= 0:
		return fmt.Errorf("page size must be positive, got %d", c.PageSize)
	case c.GPUMemoryUtilization <= 0 || c.GPUMemoryUtilization > 1:
		return fmt.Errorf("GPU memory utilization must be in (0, 1], got %g", c.GPUMemoryUtilization)
	case c.GPUs < 1:
		return fmt.Errorf("GPUs per worker must be at least 1, got %d", c.GPUs)
	case c.ReserveBytes < 0:
		return fmt.Errorf("reserve must not be negative, got %d", c.ReserveBytes)
	case c.DType != v1alpha1.KVCacheBF16 && c.DType != v1alpha1.KVCacheFP8:
		return fmt.Errorf("unknown KV-cache dtype %q", c.DType)
	}
	return c.Model.Validate()
}

// Estimate is what one worker on one kind of GPU holds.
type Estimate struct {
	GPU GPU
	// RequestedBytes is GPU memory x utilization, per GPU.
	RequestedBytes int64
	// WeightsPerGPUBytes is the worker's weights spread over its GPUs.
	WeightsPerGPUBytes int64
	// AvailableBytes is what is left per GPU for the cache (may be negative
	// when the weights alone do not fit).
	AvailableBytes int64
	// Pages is the pages per layer the pool holds.
	Pages int64
	// Tokens is the tokens the pool holds: Pages x page size.
	Tokens int64
	// PoolBytes is the memory the pool takes per GPU: Pages x layers x page
	// bytes.
	PoolBytes int64
}

// MaxContextLength is the longest single sequence that fits: the whole pool.
func (e Estimate) MaxContextLength() int64 { return e.Tokens }

// Estimate sizes a worker's pool on gpu.
func (c Config) Estimate(gpu GPU) Estimate {
	e := Estimate{GPU: gpu}
	e.RequestedBytes = int64(math.Floor(float64(gpu.MemoryBytes) * c.GPUMemoryUtilization))
	gpus := int64(max(c.GPUs, 1))
	e.WeightsPerGPUBytes = (c.Model.WeightsBytes + gpus - 1) / gpus
	e.AvailableBytes = e.RequestedBytes - e.WeightsPerGPUBytes - c.ReserveBytes - gpu.InUseBytes
	if perPage := int64(c.Model.Layers) * c.PageBytes(); perPage > 0 && e.AvailableBytes > 0 {
		e.Pages = e.AvailableBytes / perPage
		e.Tokens = e.Pages * int64(c.PageSize)
		e.PoolBytes = e.Pages * perPage
	}
	return e
}

// ContextError says that one sequence of the requested length does not fit,
// with what vLLM's start-up check says: needed, available, and the longest
// context that would fit.
type ContextError struct {
	ModelName      string
	GPUProduct     string
	ContextLength  int64
	NeededBytes    int64
	AvailableBytes int64
	WeightsBytes   int64 // per GPU
	MaxContext     int64
}

func (e *ContextError) Error() string {
	on := ""
	if e.GPUProduct != "" {
		on = " on " + e.GPUProduct
	}
	if e.AvailableBytes <= 0 {
		return fmt.Sprintf("%s%s: no memory is left for the KV cache: the weights take %.2f GiB per GPU, "+
			"more than the usable memory less the reserve; one sequence of %d tokens needs %.2f GiB. "+
			"Raise gpusPerWorker or gpuMemoryUtilization, or choose larger GPUs",
			e.ModelName, on, gib(e.WeightsBytes), e.ContextLength, gib(e.NeededBytes))
	}
	return fmt.Sprintf("%s%s: one sequence of %d tokens needs %.2f GiB of KV cache, but only %.2f GiB is available; "+
		"the longest context that fits is %d tokens. Lower contextLength, raise gpuMemoryUtilization or "+
		"gpusPerWorker, or choose larger GPUs",
		e.ModelName, on, e.ContextLength, gib(e.NeededBytes), gib(e.AvailableBytes), e.MaxContext)
}

// CheckContext returns a *ContextError when one sequence of contextLength
// does not fit in the pool of e.
func (c Config) CheckContext(e Estimate, contextLength int64) error {
	if contextLength <= e.MaxContextLength() {
		return nil
	}
	return &ContextError{
		ModelName:      c.Model.Name,
		GPUProduct:     e.GPU.Product,
		ContextLength:  contextLength,
		NeededBytes:    c.SequenceBytes(contextLength),
		AvailableBytes: e.AvailableBytes,
		WeightsBytes:   e.WeightsPerGPUBytes,
		MaxContext:     e.MaxContextLength(),
	}
}

func gib(b int64) float64 { return float64(b) / GiB }

// FromSpec resolves an MLAService spec to a capacity configuration.
func FromSpec(spec *v1alpha1.MLAServiceSpec) (Config, error) {
	m, err := model.FromSpec(spec.Model)
	if err != nil {
		return Config{}, err
	}
	c := Config{
		Model:                m,
		DType:                spec.KVCache.DType,
		PageSize:             int(spec.KVCache.PageSize),
		GPUMemoryUtilization: spec.KVCache.GPUMemoryUtilization,
		GPUs:                 int(spec.GPUsPerWorker),
	}
	// The apiserver applies these defaults; objects built in code may lack them.
	if c.DType == "" {
		c.DType = v1alpha1.KVCacheBF16
	}
	if c.PageSize == 0 {
		c.PageSize = 64
	}
	if c.GPUMemoryUtilization == 0 {
		c.GPUMemoryUtilization = 0.9
	}
	if c.GPUs == 0 {
		c.GPUs = 1
	}
	if spec.KVCache.Reserve != nil {
		c.ReserveBytes = spec.KVCache.Reserve.Value()
	} else {
		c.ReserveBytes = DefaultReserveBytes
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// DefaultReserveBytes is the per-GPU reserve when the spec states none; it
// matches the CRD's default.
const DefaultReserveBytes = 2 * GiB
