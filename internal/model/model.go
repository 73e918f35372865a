// Package model knows the geometry of MLA models: the published DeepSeek
// presets, how an MLAService's model spec resolves to a geometry and a
// weights size, and the softmax scale decode attention uses.
package model

import (
	"fmt"
	"math"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// Geometry is what decides the size of the latent KV cache and the shape of
// decode attention.
type Geometry struct {
	Layers         int
	KVLoRARank     int // latent width, also the value width (512)
	QKRopeHeadDim  int // RoPE key width stored after the latent (64)
	QKNopeHeadDim  int // no-RoPE query/key width per head (128)
	AttentionHeads int
	// MaxPositionEmbeddings is the longest context the model supports; 0
	// means not stated.
	MaxPositionEmbeddings int64
	// YaRN parameters that scale the softmax; Factor 0 means no YaRN.
	RopeScalingFactor float64
	MScaleAllDim      float64
}

// RowWidth is the values stored per token and layer: latent then RoPE (576).
func (g Geometry) RowWidth() int { return g.KVLoRARank + g.QKRopeHeadDim }

// SoftmaxScale is the scale DeepSeek's attention applies to QK^T. It is set
// by the head dimension before absorption, (qk_nope + qk_rope)^-0.5 = 192^-0.5,
// not by the 576-wide absorbed row, and YaRN multiplies it by mscale^2.
func (g Geometry) SoftmaxScale() float64 {
	scale := 1 / math.Sqrt(float64(g.QKNopeHeadDim+g.QKRopeHeadDim))
	if g.RopeScalingFactor > 1 && g.MScaleAllDim > 0 {
		m := 0.1*g.MScaleAllDim*math.Log(g.RopeScalingFactor) + 1
		scale *= m * m
	}
	return scale
}

// Validate reports a geometry the engine cannot run.
func (g Geometry) Validate() error {
	switch {
	case g.Layers < 1:
		return fmt.Errorf("layers must be at least 1, got %d", g.Layers)
	case g.KVLoRARank != 512:
		return fmt.Errorf("kv_lora_rank must be 512, got %d", g.KVLoRARank)
	case g.QKRopeHeadDim != 64:
		return fmt.Errorf("qk_rope_head_dim must be 64, got %d", g.QKRopeHeadDim)
	case g.QKNopeHeadDim < 1:
		return fmt.Errorf("qk_nope_head_dim must be at least 1, got %d", g.QKNopeHeadDim)
	case g.AttentionHeads != 16 && g.AttentionHeads != 32 && g.AttentionHeads != 64 && g.AttentionHeads != 128:
		return fmt.Errorf("attention heads must be 16, 32, 64 or 128, got %d", g.AttentionHeads)
	}
	return nil
}

// Model is a geometry with the size of its weights.
type Model struct {
	Name string
	Geometry
	// WeightsBytes is the GPU memory the weights take across all GPUs of a
	// worker.
	WeightsBytes int64
}

// Preset is a published model configuration.
type Preset struct {
	Geometry
	// Parameters is the published parameter count.
	Parameters int64
	// CheckpointBytes is the size of the published checkpoint, which is
	// what a worker loads by default.
	CheckpointBytes int64
}

// Presets holds the DeepSeek configurations from their published
// config.json files and checkpoints.
var Presets = map[v1alpha1.ModelPreset]Preset{
	// DeepSeek-V2-Lite: 15.7B parameters in bf16, 27 layers, 16 heads.
	v1alpha1.PresetDeepSeekV2Lite: {
		Geometry: Geometry{Layers: 27, KVLoRARank: 512, QKRopeHeadDim: 64, QKNopeHeadDim: 128,
			AttentionHeads: 16, MaxPositionEmbeddings: 163840, RopeScalingFactor: 40, MScaleAllDim: 0.707},
		Parameters:      15_706_484_224,
		CheckpointBytes: 2 * 15_706_484_224,
	},
	// DeepSeek-V2: 236B parameters in bf16, 60 layers, 128 heads.
	v1alpha1.PresetDeepSeekV2: {
		Geometry: Geometry{Layers: 60, KVLoRARank: 512, QKRopeHeadDim: 64, QKNopeHeadDim: 128,
			AttentionHeads: 128, MaxPositionEmbeddings: 163840, RopeScalingFactor: 40, MScaleAllDim: 0.707},
		Parameters:      235_741_434_880,
		CheckpointBytes: 2 * 235_741_434_880,
	},
	// DeepSeek-V3: 671B parameters (685B with the multi-token-prediction
	// module), 61 layers, 128 heads. DeepSeek publishes it in FP8 with
	// block scales: about 689 GB, against 1.34 TB in bf16.
	v1alpha1.PresetDeepSeekV3: {
		Geometry: Geometry{Layers: 61, KVLoRARank: 512, QKRopeHeadDim: 64, QKNopeHeadDim: 128,
			AttentionHeads: 128, MaxPositionEmbeddings: 163840, RopeScalingFactor: 40, MScaleAllDim: 1.0},
		Parameters:      671_026_419_200,
		CheckpointBytes: 688_586_727_753,
	},
}

// FromSpec resolves a model spec to a geometry and weights size.
func FromSpec(spec v1alpha1.ModelSpec) (Model, error) {
	m := Model{Name: spec.Name}
	switch {
	case spec.Preset != nil:
		p, ok := Presets[*spec.Preset]
		if !ok {
			return Model{}, fmt.Errorf("unknown model preset %q", *spec.Preset)
		}
		m.Geometry = p.Geometry
		m.WeightsBytes = p.CheckpointBytes
	case spec.Geometry != nil:
		g := spec.Geometry
		m.Geometry = Geometry{
			Layers:         int(g.Layers),
			KVLoRARank:     int(orDefault(g.KVLoRARank, 512)),
			QKRopeHeadDim:  int(orDefault(g.QKRopeHeadDim, 64)),
			QKNopeHeadDim:  int(orDefault(g.QKNopeHeadDim, 128)),
			AttentionHeads: int(g.AttentionHeads),
		}
		if g.MaxPositionEmbeddings != nil {
			m.MaxPositionEmbeddings = *g.MaxPositionEmbeddings
		}
	default:
		return Model{}, fmt.Errorf("model %q has neither a preset nor a geometry", spec.Name)
	}
	if spec.WeightsSize != nil {
		m.WeightsBytes = spec.WeightsSize.Value()
	} else if spec.Preset == nil {
		return Model{}, fmt.Errorf("model %q: weightsSize is required with an explicit geometry", spec.Name)
	}
	if m.WeightsBytes < 0 {
		return Model{}, fmt.Errorf("model %q: weightsSize must not be negative", spec.Name)
	}
	if err := m.Validate(); err != nil {
		return Model{}, fmt.Errorf("model %q: %w", spec.Name, err)
	}
	return m, nil
}

func orDefault(v, def int32) int32 {
	if v == 0 {
		return def
	}
	return v
}
