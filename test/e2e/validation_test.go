package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/test/builders"
)

// 6. Invalid manifests are rejected by the apiserver with the CEL messages.
func TestInvalidManifestsAreRejected(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	base := func(name string) *builders.MLAServiceBuilder { return builders.MLAService(ns, name) }
	cases := []struct {
		name string
		svc  *v1alpha1.MLAService
		want string
	}{
		{"context-too-long", base("context-too-long").Context(200000).Obj(),
			"contextLength exceeds the model's maximum of 163840 tokens"},
		{"preset-and-geometry", base("preset-and-geometry").Weights("31Gi").Mutate(func(s *v1alpha1.MLAService) {
			s.Spec.Model.Geometry = &v1alpha1.ModelGeometry{Layers: 27, AttentionHeads: 16}
		}).Obj(),
			"set exactly one of model.preset and model.geometry"},
		{"rollout-stuck", base("rollout-stuck").Rollout(0, 0).Obj(),
			"rollout.maxUnavailable and rollout.maxSurge cannot both be 0"},
		{"page-size", base("page-size").PageSize(128).Obj(),
			"pageSize must be 64"},
		{"memory-utilization", base("memory-utilization").Utilization(0.99).Obj(),
			"gpuMemoryUtilization must be greater than 0 and at most 0.98"},
		{"min-above-max", base("min-above-max").Autoscaling(4, 2, 0.7).Mutate(func(s *v1alpha1.MLAService) { s.Spec.Replicas = nil }).Obj(),
			"autoscaling.minReplicas must not exceed autoscaling.maxReplicas"},
		{"geometry-without-weights", base("geometry-without-weights").Mutate(func(s *v1alpha1.MLAService) {
			s.Spec.Model.Preset = nil
			s.Spec.Model.Geometry = &v1alpha1.ModelGeometry{Layers: 27, AttentionHeads: 16}
		}).Obj(), "model.weightsSize is required with an explicit model.geometry"},
		{"latent-width", base("latent-width").Mutate(func(s *v1alpha1.MLAService) {
			s.Spec.Model.Preset = nil
			s.Spec.Model.Geometry = &v1alpha1.ModelGeometry{Layers: 27, AttentionHeads: 16, KVLoRARank: 256}
			q := resource.MustParse("31Gi")
			s.Spec.Model.WeightsSize = &q
		}).Obj(), "kvLoraRank must be 512"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := kubectl(ctx, mustJSON(t, manifest(tc.svc)), "apply", "-f", "-")
			if err == nil {
				t.Fatalf("accepted:\n%s", out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("rejected without the CEL message %q:\n%s", tc.want, out)
			}
		})
	}
	// A valid one next to them is accepted, so the rejections are the rules'.
	if _, err := kubectl(ctx, mustJSON(t, manifest(base("valid").Replicas(0).Obj())), "apply", "-f", "-"); err != nil {
		t.Fatalf("valid service rejected: %v", err)
	}
}
