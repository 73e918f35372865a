// Package settings is a worker's configuration: flags that default from the
// environment the operator sets (api/v1alpha1 keys.go), resolved to the same
// capacity.Config the operator sized the worker with.
package settings

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/capacity"
	"github.com/mla-operator/mla-operator/internal/model"
)

// Settings is everything a worker is started with.
type Settings struct {
	Device       string // auto, cuda or cpu
	BindAddress  string
	Port         int
	ModelName    string
	ServiceName  string
	PodName      string
	PodNamespace string

	Layers         int
	KVLoRARank     int
	QKRopeHeadDim  int
	QKNopeHeadDim  int
	AttentionHeads int
	WeightsBytes   int64
	// ContextLength is the longest sequence admitted; 0 means the whole
	// pool.
	ContextLength        int64
	KVDType              string
	PageSize             int
	GPUMemoryUtilization float64
	ReserveBytes         int64
	GPUs                 int
	// SoftmaxScale 0 means (qk_nope + qk_rope)^-0.5, without YaRN.
	SoftmaxScale float64
	SimulatedGPU string

	Heartbeat         time.Duration
	ReportMinInterval time.Duration
	DrainTimeout      time.Duration
	CPUThreads        int
	LogLevel          string
}

// Device choices.
const (
	DeviceAuto = "auto"
	DeviceCUDA = "cuda"
	DeviceCPU  = "cpu"
)

// DefaultDrainTimeout leaves 5 s of Kubernetes' default 30 s
// terminationGracePeriodSeconds for the final report and shutdown.
const DefaultDrainTimeout = 25 * time.Second

// Register defines the worker's flags on fs, each defaulting from its
// environment variable as looked up by env (os.Getenv in production). It
// returns the settings the flags fill and a function that reports
// environment values that did not parse, to call after fs.Parse.
func Register(fs *flag.FlagSet, env func(string) string) (*Settings, func() error) {
	s := &Settings{}
	envErrs := map[string]error{} // by flag name
	str := func(p *string, name, key, def, usage string) {
		v := def
		if e := env(key); e != "" {
			v = e
		}
		fs.StringVar(p, name, v, fmt.Sprintf("%s (env %s)", usage, key))
	}
	num := func(name, key, def, usage string, set func(string) error) {
		v := def
		if e := env(key); e != "" {
			v = e
			if err := set(e); err != nil {
				envErrs[name] = fmt.Errorf("environment %s=%q: %w", key, e, err)
			}
		} else if def != "" {
			if err := set(def); err != nil {
				panic(err)
			}
		}
		envNote := ""
		if key != "" {
			envNote = fmt.Sprintf(" (env %s)", key)
		}
		fs.Func(name, usage+envNote+defaultNote(v), set)
	}
	intVar := func(p *int, name, key, def, usage string) {
		num(name, key, def, usage, func(v string) error {
			n, err := strconv.Atoi(v)
			*p = n
			return err
		})
	}
	int64Var := func(p *int64, name, key, def, usage string) {
		num(name, key, def, usage, func(v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			*p = n
			return err
		})
	}
	floatVar := func(p *float64, name, key, def, usage string) {
		num(name, key, def, usage, func(v string) error {
			f, err := strconv.ParseFloat(v, 64)
			*p = f
			return err
		})
	}

	str(&s.Device, "device", v1alpha1.EnvDevice, DeviceAuto, "decode device: auto (cuda when the CUDA backend is built in and NVML finds a GPU, else cpu), cuda or cpu")
	str(&s.BindAddress, "bind-address", v1alpha1.EnvPodIP, "0.0.0.0", "address the API listens on")
	intVar(&s.Port, "port", v1alpha1.EnvPort, "8080", "port the API listens on")
	str(&s.ModelName, "model-name", v1alpha1.EnvModelName, "", "model name, for metrics labels and logs")
	str(&s.ServiceName, "service-name", v1alpha1.EnvServiceName, "", "MLAService this worker belongs to, for logs")
	str(&s.PodName, "pod-name", v1alpha1.EnvPodName, "", "this pod's name; with --pod-namespace it turns on capacity reports on the pod")
	str(&s.PodNamespace, "pod-namespace", v1alpha1.EnvPodNamespace, "", "this pod's namespace")

	intVar(&s.Layers, "layers", v1alpha1.EnvLayers, "", "transformer layers (required)")
	intVar(&s.KVLoRARank, "kv-lora-rank", v1alpha1.EnvKVLoRARank, "512", "latent width (kv_lora_rank)")
	intVar(&s.QKRopeHeadDim, "qk-rope-head-dim", v1alpha1.EnvQKRopeHeadDim, "64", "RoPE key width")
	intVar(&s.QKNopeHeadDim, "qk-nope-head-dim", v1alpha1.EnvQKNopeHeadDim, "128", "no-RoPE query/key width per head")
	intVar(&s.AttentionHeads, "attention-heads", v1alpha1.EnvAttentionHeads, "", "query heads: 16, 32, 64 or 128 (required)")
	int64Var(&s.WeightsBytes, "weights-bytes", v1alpha1.EnvWeightsBytes, "0", "GPU memory the weights take across the worker's GPUs")
	int64Var(&s.ContextLength, "context-length", v1alpha1.EnvContextLength, "0", "longest sequence admitted; 0 = the whole pool")
	str(&s.KVDType, "kv-dtype", v1alpha1.EnvKVDType, string(v1alpha1.KVCacheBF16), "KV-cache dtype: bf16 (fp8 is refused: no engine supports it yet)")
	intVar(&s.PageSize, "page-size", v1alpha1.EnvPageSize, "64", "tokens per KV page (the engines need 64)")
	floatVar(&s.GPUMemoryUtilization, "gpu-memory-utilization", v1alpha1.EnvGPUMemoryUtilization, "0.9", "fraction of GPU memory the worker may use")
	int64Var(&s.ReserveBytes, "reserve-bytes", v1alpha1.EnvReserveBytes, strconv.FormatInt(capacity.DefaultReserveBytes, 10), "per-GPU bytes kept for activations and workspace")
	intVar(&s.GPUs, "gpus", v1alpha1.EnvGPUs, "1", "GPUs per worker (the weights spread over them; each holds the whole latent cache)")
	floatVar(&s.SoftmaxScale, "softmax-scale", v1alpha1.EnvSoftmaxScale, "0", "attention softmax scale; 0 = (qk_nope + qk_rope)^-0.5 without YaRN")
	str(&s.SimulatedGPU, "simulated-gpu", v1alpha1.EnvSimulatedGPU, "", "in CPU mode, size the pool as if on this GPU: <product>:<memoryMiB>")

	fs.DurationVar(&s.Heartbeat, "report-heartbeat", 30*time.Second, "longest time between capacity reports")
	fs.DurationVar(&s.ReportMinInterval, "report-min-interval", time.Second, "shortest time between capacity reports")
	fs.DurationVar(&s.DrainTimeout, "drain-timeout", DefaultDrainTimeout, "after SIGTERM, how long to keep serving existing sequences before exiting")
	fs.IntVar(&s.CPUThreads, "cpu-threads", 0, "goroutines per CPU decode step; 0 = GOMAXPROCS")
	fs.StringVar(&s.LogLevel, "log-level", "info", "debug, info, warn or error")

	// An environment value that does not parse is an error unless its flag
	// was given and replaced it.
	return s, func() error {
		fs.Visit(func(f *flag.Flag) { delete(envErrs, f.Name) })
		errs := make([]error, 0, len(envErrs))
		for _, err := range envErrs {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
}

func defaultNote(v string) string {
	if v == "" {
		return ""
	}
	return fmt.Sprintf(" (default %s)", v)
}

// Capacity resolves the settings to the capacity model's configuration,
// refusing what no engine can serve.
func (s *Settings) Capacity() (capacity.Config, error) {
	if s.Layers == 0 || s.AttentionHeads == 0 {
		return capacity.Config{}, fmt.Errorf("--layers (%s) and --attention-heads (%s) are required",
			v1alpha1.EnvLayers, v1alpha1.EnvAttentionHeads)
	}
	switch v1alpha1.KVCacheDType(s.KVDType) {
	case v1alpha1.KVCacheBF16:
	case v1alpha1.KVCacheFP8:
		return capacity.Config{}, fmt.Errorf("KV-cache dtype fp8 is not supported: no decode engine implements it yet; use bf16")
	default:
		return capacity.Config{}, fmt.Errorf("unknown KV-cache dtype %q (want bf16)", s.KVDType)
	}
	if s.PageSize != 64 {
		return capacity.Config{}, fmt.Errorf("page size must be 64 (FlashMLA's layout), got %d", s.PageSize)
	}
	if s.WeightsBytes < 0 || s.ContextLength < 0 {
		return capacity.Config{}, fmt.Errorf("weights bytes and context length must not be negative")
	}
	if v := s.SoftmaxScale; v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return capacity.Config{}, fmt.Errorf("softmax scale must be positive and finite (0 = default), got %g", v)
	}
	switch s.Device {
	case DeviceAuto, DeviceCUDA, DeviceCPU:
	default:
		return capacity.Config{}, fmt.Errorf("device must be auto, cuda or cpu, got %q", s.Device)
	}
	c := capacity.Config{
		Model: model.Model{
			Name: s.ModelName,
			Geometry: model.Geometry{
				Layers: s.Layers, KVLoRARank: s.KVLoRARank, QKRopeHeadDim: s.QKRopeHeadDim,
				QKNopeHeadDim: s.QKNopeHeadDim, AttentionHeads: s.AttentionHeads,
			},
			WeightsBytes: s.WeightsBytes,
		},
		DType:                v1alpha1.KVCacheDType(s.KVDType),
		PageSize:             s.PageSize,
		GPUMemoryUtilization: s.GPUMemoryUtilization,
		ReserveBytes:         s.ReserveBytes,
		GPUs:                 s.GPUs,
	}
	if err := c.Validate(); err != nil {
		return capacity.Config{}, err
	}
	return c, nil
}

// Scale is the softmax scale decode uses.
func (s *Settings) Scale() float32 {
	if s.SoftmaxScale > 0 {
		return float32(s.SoftmaxScale)
	}
	return float32(1 / math.Sqrt(float64(s.QKNopeHeadDim+s.QKRopeHeadDim)))
}

// Reporting says whether the pod to report on is known.
func (s *Settings) Reporting() bool {
	return strings.TrimSpace(s.PodName) != "" && strings.TrimSpace(s.PodNamespace) != ""
}
