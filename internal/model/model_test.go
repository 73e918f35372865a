package model

import (
	"math"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

func TestSoftmaxScale(t *testing.T) {
	cases := []struct {
		preset v1alpha1.ModelPreset
		want   float64
	}{
		// 192^-0.5 * (0.1*ln(40)+1)^2
		{v1alpha1.PresetDeepSeekV3, 0.07216878 * 1.36888794 * 1.36888794},
		// 192^-0.5 * (0.0707*ln(40)+1)^2
		{v1alpha1.PresetDeepSeekV2Lite, 0.07216878 * 1.26080444 * 1.26080444},
	}
	for _, c := range cases {
		got := Presets[c.preset].SoftmaxScale()
		if math.Abs(got-c.want) > 1e-6 {
			t.Errorf("%s: softmax scale %.8f, want %.8f", c.preset, got, c.want)
		}
		if got == 1/math.Sqrt(576) {
			t.Errorf("%s: scale must not be 576^-0.5", c.preset)
		}
	}
	if got, want := (Geometry{QKNopeHeadDim: 128, QKRopeHeadDim: 64}).SoftmaxScale(), 1/math.Sqrt(192); got != want {
		t.Errorf("no YaRN: %v, want %v", got, want)
	}
}

func TestPresetWeights(t *testing.T) {
	const gb = 1e9
	cases := []struct {
		preset   v1alpha1.ModelPreset
		min, max float64 // bytes
	}{
		{v1alpha1.PresetDeepSeekV2Lite, 31.3 * gb, 31.5 * gb},
		{v1alpha1.PresetDeepSeekV3, 0.68e12, 0.70e12},
	}
	for _, c := range cases {
		b := float64(Presets[c.preset].CheckpointBytes)
		if b < c.min || b > c.max {
			t.Errorf("%s checkpoint %.3g bytes, want in [%.3g, %.3g]", c.preset, b, c.min, c.max)
		}
	}
	// V3 in bf16 would be about 1.34 TB.
	if bf16 := 2 * float64(Presets[v1alpha1.PresetDeepSeekV3].Parameters); bf16 < 1.33e12 || bf16 > 1.35e12 {
		t.Errorf("V3 bf16 weights %.3g, want about 1.34e12", bf16)
	}
}

func TestFromSpec(t *testing.T) {
	cases := []struct {
		name        string
		spec        v1alpha1.ModelSpec
		wantLayers  int
		wantWeights int64
		wantErr     bool
	}{
		{
			name:        "preset takes checkpoint size",
			spec:        v1alpha1.ModelSpec{Name: "v2-lite", Preset: ptr.To(v1alpha1.PresetDeepSeekV2Lite)},
			wantLayers:  27,
			wantWeights: Presets[v1alpha1.PresetDeepSeekV2Lite].CheckpointBytes,
		},
		{
			name:        "preset with explicit weights",
			spec:        v1alpha1.ModelSpec{Name: "v3-bf16", Preset: ptr.To(v1alpha1.PresetDeepSeekV3), WeightsSize: ptr.To(resource.MustParse("1342G"))},
			wantLayers:  61,
			wantWeights: 1342e9,
		},
		{
			name: "explicit geometry fills DeepSeek defaults",
			spec: v1alpha1.ModelSpec{Name: "custom", Geometry: &v1alpha1.ModelGeometry{Layers: 12, AttentionHeads: 32},
				WeightsSize: ptr.To(resource.MustParse("8Gi"))},
			wantLayers:  12,
			wantWeights: 8 << 30,
		},
		{
			name:    "geometry without weights",
			spec:    v1alpha1.ModelSpec{Name: "custom", Geometry: &v1alpha1.ModelGeometry{Layers: 12, AttentionHeads: 32}},
			wantErr: true,
		},
		{
			name: "unsupported head count",
			spec: v1alpha1.ModelSpec{Name: "custom", Geometry: &v1alpha1.ModelGeometry{Layers: 12, AttentionHeads: 48},
				WeightsSize: ptr.To(resource.MustParse("8Gi"))},
			wantErr: true,
		},
		{name: "neither", spec: v1alpha1.ModelSpec{Name: "x"}, wantErr: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := FromSpec(c.spec)
			if (err != nil) != c.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, c.wantErr)
			}
			if c.wantErr {
				return
			}
			if m.Layers != c.wantLayers || m.WeightsBytes != c.wantWeights || m.RowWidth() != 576 {
				t.Errorf("got layers %d weights %d row %d", m.Layers, m.WeightsBytes, m.RowWidth())
			}
		})
	}
}
