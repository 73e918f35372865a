package settings

import (
	"flag"
	"io"
	"strconv"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/capacity"
)

func parse(t *testing.T, env map[string]string, args ...string) (*Settings, error) {
	t.Helper()
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s, envErr := Register(fs, func(k string) string { return env[k] })
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return s, envErr()
}

// operatorEnv is the environment an operator that sized a worker with cfg
// sets, field by field.
func operatorEnv(cfg capacity.Config, contextLength int64) map[string]string {
	g := cfg.Model.Geometry
	return map[string]string{
		v1alpha1.EnvModelName:            cfg.Model.Name,
		v1alpha1.EnvLayers:               strconv.Itoa(g.Layers),
		v1alpha1.EnvKVLoRARank:           strconv.Itoa(g.KVLoRARank),
		v1alpha1.EnvQKRopeHeadDim:        strconv.Itoa(g.QKRopeHeadDim),
		v1alpha1.EnvQKNopeHeadDim:        strconv.Itoa(g.QKNopeHeadDim),
		v1alpha1.EnvAttentionHeads:       strconv.Itoa(g.AttentionHeads),
		v1alpha1.EnvWeightsBytes:         strconv.FormatInt(cfg.Model.WeightsBytes, 10),
		v1alpha1.EnvContextLength:        strconv.FormatInt(contextLength, 10),
		v1alpha1.EnvKVDType:              string(cfg.DType),
		v1alpha1.EnvPageSize:             strconv.Itoa(cfg.PageSize),
		v1alpha1.EnvGPUMemoryUtilization: strconv.FormatFloat(cfg.GPUMemoryUtilization, 'g', -1, 64),
		v1alpha1.EnvReserveBytes:         strconv.FormatInt(cfg.ReserveBytes, 10),
		v1alpha1.EnvGPUs:                 strconv.Itoa(cfg.GPUs),
		v1alpha1.EnvSoftmaxScale:         strconv.FormatFloat(g.SoftmaxScale(), 'g', -1, 64),
	}
}

func TestEnvironmentResolvesToTheOperatorsCapacity(t *testing.T) {
	reserve := resource.MustParse("3Gi")
	for _, preset := range []v1alpha1.ModelPreset{v1alpha1.PresetDeepSeekV2Lite, v1alpha1.PresetDeepSeekV3} {
		spec := &v1alpha1.MLAServiceSpec{
			Model:         v1alpha1.ModelSpec{Name: string(preset), Preset: &preset},
			KVCache:       v1alpha1.KVCacheSpec{GPUMemoryUtilization: 0.93, Reserve: &reserve},
			GPUsPerWorker: 8,
		}
		want, err := capacity.FromSpec(spec)
		if err != nil {
			t.Fatal(err)
		}
		s, err := parse(t, operatorEnv(want, 32768))
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Capacity()
		if err != nil {
			t.Fatal(err)
		}
		for _, gpu := range []capacity.GPU{
			{Product: "NVIDIA-H100-80GB-HBM3", MemoryBytes: 81559 << 20},
			{Product: "NVIDIA-H200", MemoryBytes: 143771 << 20, InUseBytes: 1 << 30},
		} {
			if g, w := got.Estimate(gpu), want.Estimate(gpu); g != w {
				t.Errorf("%s on %s: worker estimates %+v, operator %+v", preset, gpu.Product, g, w)
			}
		}
		if s.ContextLength != 32768 || s.Scale() != float32(want.Model.SoftmaxScale()) {
			t.Errorf("%s: context %d, scale %g; want 32768, %g", preset, s.ContextLength, s.Scale(), want.Model.SoftmaxScale())
		}
	}
}

func TestFlagsOverrideEnvironment(t *testing.T) {
	env := map[string]string{v1alpha1.EnvLayers: "27", v1alpha1.EnvAttentionHeads: "16", v1alpha1.EnvPort: "9000",
		v1alpha1.EnvPodIP: "10.1.2.3"}
	s, err := parse(t, env, "--port", "9100", "--layers", "2")
	if err != nil {
		t.Fatal(err)
	}
	if s.Port != 9100 || s.Layers != 2 || s.AttentionHeads != 16 || s.BindAddress != "10.1.2.3" {
		t.Fatalf("settings = %+v", s)
	}
	if s.Device != DeviceAuto || s.DrainTimeout != DefaultDrainTimeout || s.GPUMemoryUtilization != 0.9 ||
		s.ReserveBytes != capacity.DefaultReserveBytes {
		t.Fatalf("defaults not applied: %+v", s)
	}
}

func TestBadEnvironmentIsAnErrorUnlessAFlagReplacesIt(t *testing.T) {
	env := map[string]string{v1alpha1.EnvLayers: "many", v1alpha1.EnvAttentionHeads: "16"}
	if _, err := parse(t, env); err == nil || !strings.Contains(err.Error(), v1alpha1.EnvLayers) {
		t.Fatalf("unparsable %s = %v, want an error naming it", v1alpha1.EnvLayers, err)
	}
	if _, err := parse(t, env, "--layers", "3"); err != nil {
		t.Fatalf("flag replacing a bad environment value: %v", err)
	}
}

func TestCapacityRefusesWhatNoEngineServes(t *testing.T) {
	base := map[string]string{v1alpha1.EnvLayers: "27", v1alpha1.EnvAttentionHeads: "16"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"fp8", []string{"--kv-dtype", "fp8"}, "fp8 is not supported"},
		{"unknown dtype", []string{"--kv-dtype", "int4"}, "unknown KV-cache dtype"},
		{"page size", []string{"--page-size", "16"}, "page size must be 64"},
		{"heads", []string{"--attention-heads", "12"}, "attention heads"},
		{"latent width", []string{"--kv-lora-rank", "256"}, "kv_lora_rank"},
		{"utilization", []string{"--gpu-memory-utilization", "1.5"}, "utilization"},
		{"device", []string{"--device", "tpu"}, "device must be"},
		{"scale", []string{"--softmax-scale", "-1"}, "softmax scale"},
		{"no layers", []string{"--layers", "0"}, "required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parse(t, base, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Capacity(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Capacity = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestReportingNeedsPodNameAndNamespace(t *testing.T) {
	s, _ := parse(t, map[string]string{v1alpha1.EnvPodName: "w-0"})
	if s.Reporting() {
		t.Error("reporting on without a namespace")
	}
	s, _ = parse(t, map[string]string{v1alpha1.EnvPodName: "w-0", v1alpha1.EnvPodNamespace: "default"})
	if !s.Reporting() {
		t.Error("reporting off with pod name and namespace")
	}
}
