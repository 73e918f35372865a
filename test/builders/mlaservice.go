// Package builders makes test objects with readable one-liners instead of
// long literals: builders.MLAService("ns", "v3").Preset(...).Context(4096).Obj().
package builders

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// MLAServiceBuilder builds an MLAService; the zero service it starts from is
// a valid DeepSeek-V2-Lite service with a 4,096-token context.
type MLAServiceBuilder struct{ svc v1alpha1.MLAService }

// MLAService starts a builder.
func MLAService(namespace, name string) *MLAServiceBuilder {
	return &MLAServiceBuilder{svc: v1alpha1.MLAService{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "MLAService"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1alpha1.MLAServiceSpec{
			Model:         v1alpha1.ModelSpec{Name: "deepseek-ai/DeepSeek-V2-Lite", Preset: ptr.To(v1alpha1.PresetDeepSeekV2Lite)},
			ContextLength: 4096,
		},
	}}
}

// Obj returns a copy of the built object.
func (b *MLAServiceBuilder) Obj() *v1alpha1.MLAService { return b.svc.DeepCopy() }

// Preset sets the model preset and clears explicit geometry.
func (b *MLAServiceBuilder) Preset(p v1alpha1.ModelPreset) *MLAServiceBuilder {
	b.svc.Spec.Model.Preset = ptr.To(p)
	b.svc.Spec.Model.Geometry = nil
	return b
}

// ModelName sets spec.model.name.
func (b *MLAServiceBuilder) ModelName(n string) *MLAServiceBuilder {
	b.svc.Spec.Model.Name = n
	return b
}

// Geometry sets explicit geometry and clears the preset.
func (b *MLAServiceBuilder) Geometry(g v1alpha1.ModelGeometry) *MLAServiceBuilder {
	b.svc.Spec.Model.Geometry = &g
	b.svc.Spec.Model.Preset = nil
	return b
}

// Weights sets spec.model.weightsSize.
func (b *MLAServiceBuilder) Weights(q string) *MLAServiceBuilder {
	b.svc.Spec.Model.WeightsSize = ptr.To(resource.MustParse(q))
	return b
}

// Context sets spec.contextLength.
func (b *MLAServiceBuilder) Context(n int64) *MLAServiceBuilder {
	b.svc.Spec.ContextLength = n
	return b
}

// Replicas sets spec.replicas.
func (b *MLAServiceBuilder) Replicas(n int32) *MLAServiceBuilder {
	b.svc.Spec.Replicas = ptr.To(n)
	return b
}

// GPUs sets spec.gpusPerWorker.
func (b *MLAServiceBuilder) GPUs(n int32) *MLAServiceBuilder {
	b.svc.Spec.GPUsPerWorker = n
	return b
}

// DType sets spec.kvCache.dtype.
func (b *MLAServiceBuilder) DType(d v1alpha1.KVCacheDType) *MLAServiceBuilder {
	b.svc.Spec.KVCache.DType = d
	return b
}

// PageSize sets spec.kvCache.pageSize.
func (b *MLAServiceBuilder) PageSize(n int32) *MLAServiceBuilder {
	b.svc.Spec.KVCache.PageSize = n
	return b
}

// Utilization sets spec.kvCache.gpuMemoryUtilization.
func (b *MLAServiceBuilder) Utilization(u float64) *MLAServiceBuilder {
	b.svc.Spec.KVCache.GPUMemoryUtilization = u
	return b
}

// Reserve sets spec.kvCache.reserve.
func (b *MLAServiceBuilder) Reserve(q string) *MLAServiceBuilder {
	b.svc.Spec.KVCache.Reserve = ptr.To(resource.MustParse(q))
	return b
}

// Autoscaling sets spec.autoscaling with the given bounds and target.
func (b *MLAServiceBuilder) Autoscaling(minReplicas, maxReplicas int32, target float64) *MLAServiceBuilder {
	b.svc.Spec.Autoscaling = &v1alpha1.AutoscalingSpec{MinReplicas: minReplicas, MaxReplicas: maxReplicas, TargetKVUtilization: target}
	return b
}

// Windows sets the autoscaling stabilization windows and drain grace.
func (b *MLAServiceBuilder) Windows(up, down, drain metav1.Duration) *MLAServiceBuilder {
	if b.svc.Spec.Autoscaling == nil {
		b.svc.Spec.Autoscaling = &v1alpha1.AutoscalingSpec{MinReplicas: 1, MaxReplicas: 4, TargetKVUtilization: 0.7}
	}
	b.svc.Spec.Autoscaling.ScaleUpStabilization = &up
	b.svc.Spec.Autoscaling.ScaleDownStabilization = &down
	b.svc.Spec.Autoscaling.DrainGracePeriod = &drain
	return b
}

// Strategy sets spec.placement.strategy.
func (b *MLAServiceBuilder) Strategy(s v1alpha1.PlacementStrategy) *MLAServiceBuilder {
	b.svc.Spec.Placement.Strategy = s
	return b
}

// NodeSelector adds a node selector term.
func (b *MLAServiceBuilder) NodeSelector(k, v string) *MLAServiceBuilder {
	if b.svc.Spec.Placement.NodeSelector == nil {
		b.svc.Spec.Placement.NodeSelector = map[string]string{}
	}
	b.svc.Spec.Placement.NodeSelector[k] = v
	return b
}

// Toleration adds a toleration.
func (b *MLAServiceBuilder) Toleration(t corev1.Toleration) *MLAServiceBuilder {
	b.svc.Spec.Placement.Tolerations = append(b.svc.Spec.Placement.Tolerations, t)
	return b
}

// MinComputeCapability sets spec.placement.minComputeCapability.
func (b *MLAServiceBuilder) MinComputeCapability(cc string) *MLAServiceBuilder {
	b.svc.Spec.Placement.MinComputeCapability = cc
	return b
}

// Rollout sets spec.rollout.
func (b *MLAServiceBuilder) Rollout(maxUnavailable, maxSurge int32) *MLAServiceBuilder {
	b.svc.Spec.Rollout = &v1alpha1.RolloutSpec{MaxUnavailable: maxUnavailable, MaxSurge: maxSurge}
	return b
}

// Image sets spec.worker.image.
func (b *MLAServiceBuilder) Image(img string) *MLAServiceBuilder {
	b.svc.Spec.Worker.Image = img
	return b
}

// WorkerArgs appends spec.worker.args.
func (b *MLAServiceBuilder) WorkerArgs(args ...string) *MLAServiceBuilder {
	b.svc.Spec.Worker.Args = append(b.svc.Spec.Worker.Args, args...)
	return b
}

// UID sets metadata.uid, as the API server would, for fake clients that
// take the service as an owner.
func (b *MLAServiceBuilder) UID(uid types.UID) *MLAServiceBuilder {
	b.svc.UID = uid
	return b
}

// Mutate applies f for anything the builder has no method for.
func (b *MLAServiceBuilder) Mutate(f func(*v1alpha1.MLAService)) *MLAServiceBuilder {
	f(&b.svc)
	return b
}
