package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/test/builders"
)

// TestSamplesAccepted applies every sample with kubectl and checks that the
// apiserver filled in the documented defaults.
func TestSamplesAccepted(t *testing.T) {
	ctx := context.Background()
	ns := testEnv.Namespace(t)
	samples, err := filepath.Glob(filepath.Join(testEnv.Root, "config", "samples", "*.yaml"))
	if err != nil || len(samples) < 2 {
		t.Fatalf("want at least 2 samples, got %v (%v)", samples, err)
	}
	for _, f := range samples {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		if out, err := testEnv.Kubectl(ctx, "apply", "-n", ns, "-f", f); err != nil {
			t.Fatalf("sample %s rejected: %v\n%s", filepath.Base(f), err, out)
		}
	}
	var list v1alpha1.MLAServiceList
	if err := testEnv.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != len(samples)-1 {
		t.Fatalf("want %d services, got %d", len(samples)-1, len(list.Items))
	}
	svc := &v1alpha1.MLAService{}
	if err := testEnv.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "deepseek-v3"}, svc); err != nil {
		t.Fatal(err)
	}
	s := svc.Spec
	if s.KVCache.DType != v1alpha1.KVCacheBF16 || s.KVCache.PageSize != 64 || s.KVCache.Reserve == nil ||
		s.KVCache.Reserve.String() != "2Gi" || s.Placement.GPUResourceName != "nvidia.com/gpu" ||
		s.Worker.Port != 8080 || s.Worker.Image == "" {
		t.Errorf("defaults not applied: %+v", s)
	}
}

// TestDefaults checks defaults of a minimal spec, autoscaling included.
func TestDefaults(t *testing.T) {
	ctx := context.Background()
	ns := testEnv.Namespace(t)
	svc := builders.MLAService(ns, "minimal").Obj()
	svc.Spec.Autoscaling = &v1alpha1.AutoscalingSpec{MinReplicas: 1, MaxReplicas: 3}
	if err := testEnv.Client.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	s := svc.Spec
	if ptr.Deref(s.Replicas, -1) != 1 || s.GPUsPerWorker != 1 || s.KVCache.GPUMemoryUtilization != 0.9 ||
		s.Placement.Strategy != v1alpha1.MostCapacity {
		t.Errorf("spec defaults not applied: replicas=%v gpus=%d util=%v strategy=%q",
			s.Replicas, s.GPUsPerWorker, s.KVCache.GPUMemoryUtilization, s.Placement.Strategy)
	}
	a := s.Autoscaling
	if a.TargetKVUtilization != 0.7 || a.ScaleUpStabilization == nil || a.ScaleUpStabilization.Duration != 30*time.Second ||
		a.ScaleDownStabilization == nil || a.ScaleDownStabilization.Duration != 5*time.Minute {
		t.Errorf("autoscaling defaults not applied: %+v", a)
	}
}

// TestInvalidSpecsRejected: each bad spec is refused by the apiserver with
// the message a person needs.
func TestInvalidSpecsRejected(t *testing.T) {
	ctx := context.Background()
	ns := testEnv.Namespace(t)
	geometry := v1alpha1.ModelGeometry{Layers: 12, AttentionHeads: 32}
	cases := []struct {
		name string
		svc  *builders.MLAServiceBuilder
		want string
	}{
		{"preset and geometry", builders.MLAService(ns, "x").Mutate(func(s *v1alpha1.MLAService) {
			s.Spec.Model.Geometry = &geometry
			s.Spec.Model.WeightsSize = nil
		}), "set exactly one of model.preset and model.geometry"},
		{"neither preset nor geometry", builders.MLAService(ns, "x").Mutate(func(s *v1alpha1.MLAService) { s.Spec.Model.Preset = nil }),
			"set exactly one of model.preset and model.geometry"},
		{"geometry without weights", builders.MLAService(ns, "x").Geometry(geometry),
			"model.weightsSize is required with an explicit model.geometry"},
		{"unknown preset", builders.MLAService(ns, "x").Preset("deepseek-v4"), `Unsupported value: "deepseek-v4"`},
		{"empty model name", builders.MLAService(ns, "x").ModelName(""), "spec.model.name in body should be at least 1 chars long"},
		{"page size 32", builders.MLAService(ns, "x").PageSize(32), "pageSize must be 64"},
		{"utilization above 0.98", builders.MLAService(ns, "x").Utilization(0.99), "gpuMemoryUtilization must be greater than 0 and at most 0.98"},
		{"negative utilization", builders.MLAService(ns, "x").Utilization(-0.5), "gpuMemoryUtilization must be greater than 0 and at most 0.98"},
		{"unknown dtype", builders.MLAService(ns, "x").DType("fp16"), `Unsupported value: "fp16"`},
		{"zero context", builders.MLAService(ns, "x").Context(0), "spec.contextLength in body should be greater than or equal to 1"},
		{"context beyond preset maximum", builders.MLAService(ns, "x").Context(200000), "contextLength exceeds the model's maximum of 163840 tokens"},
		{"context beyond geometry maximum", builders.MLAService(ns, "x").Weights("8Gi").Context(16384).Geometry(v1alpha1.ModelGeometry{
			Layers: 12, AttentionHeads: 32, MaxPositionEmbeddings: ptr.To[int64](8192)}), "contextLength exceeds model.geometry.maxPositionEmbeddings"},
		{"latent rank 256", builders.MLAService(ns, "x").Weights("8Gi").Geometry(v1alpha1.ModelGeometry{Layers: 12, AttentionHeads: 32, KVLoRARank: 256}),
			"kvLoraRank must be 512"},
		{"rope dim 128", builders.MLAService(ns, "x").Weights("8Gi").Geometry(v1alpha1.ModelGeometry{Layers: 12, AttentionHeads: 32, QKRopeHeadDim: 128}),
			"qkRopeHeadDim must be 64"},
		{"48 heads", builders.MLAService(ns, "x").Weights("8Gi").Geometry(v1alpha1.ModelGeometry{Layers: 12, AttentionHeads: 48}),
			"Unsupported value: 48"},
		{"min above max replicas", builders.MLAService(ns, "x").Autoscaling(5, 2, 0.7), "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"},
		{"target above 1", builders.MLAService(ns, "x").Autoscaling(1, 4, 1.5), "targetKVUtilization must be greater than 0 and at most 1"},
		{"rollout that cannot progress", builders.MLAService(ns, "x").Rollout(0, 0), "rollout.maxUnavailable and rollout.maxSurge cannot both be 0"},
		{"unknown strategy", builders.MLAService(ns, "x").Strategy("Random"), `Unsupported value: "Random"`},
		{"17 GPUs per worker", builders.MLAService(ns, "x").GPUs(17), "spec.gpusPerWorker in body should be less than or equal to 16"},
		{"negative replicas", builders.MLAService(ns, "x").Replicas(-1), "spec.replicas in body should be greater than or equal to 0"},
		{"compute capability without minor", builders.MLAService(ns, "x").MinComputeCapability("9"), "spec.placement.minComputeCapability in body should match"},
		{"two weight sources", builders.MLAService(ns, "x").Mutate(func(s *v1alpha1.MLAService) {
			s.Spec.Model.Source = &v1alpha1.WeightsSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "weights"},
				HostPath:              ptr.To("/models/v3"),
			}
		}), "set exactly one of source.persistentVolumeClaim and source.hostPath"},
		{"name longer than a label value", builders.MLAService(ns, strings.Repeat("v", 64)), "metadata.name must be at most 63 characters"},
		{"relative host path", builders.MLAService(ns, "x").Mutate(func(s *v1alpha1.MLAService) {
			s.Spec.Model.Source = &v1alpha1.WeightsSource{HostPath: ptr.To("models/v3")}
		}), "spec.model.source.hostPath in body should match '^/'"},
	}
	if len(cases) < 15 {
		t.Fatalf("the suite promises at least 15 bad specs, has %d", len(cases))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := testEnv.Client.Create(ctx, c.svc.Obj())
			if err == nil {
				t.Fatalf("accepted; want rejection with %q", c.want)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("want an Invalid error, got %v", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("message %q\nlacks %q", err, c.want)
			}
		})
	}
}

// TestScaleSubresource drives spec.replicas through /scale, with the client
// and with kubectl scale.
func TestScaleSubresource(t *testing.T) {
	ctx := context.Background()
	ns := testEnv.Namespace(t)
	svc := builders.MLAService(ns, "scaled").Replicas(2).Obj()
	if err := testEnv.Client.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	scale := &autoscalingv1.Scale{}
	if err := testEnv.Client.SubResource("scale").Get(ctx, svc, scale); err != nil {
		t.Fatalf("get scale: %v", err)
	}
	if scale.Spec.Replicas != 2 {
		t.Fatalf("scale.spec.replicas = %d, want 2", scale.Spec.Replicas)
	}
	scale.Spec.Replicas = 3
	if err := testEnv.Client.SubResource("scale").Update(ctx, svc, client.WithSubResourceBody(scale)); err != nil {
		t.Fatalf("update scale: %v", err)
	}
	wantReplicas(t, ns, "scaled", 3)
	if out, err := testEnv.Kubectl(ctx, "scale", "-n", ns, "mlaservice/scaled", "--replicas=5"); err != nil {
		t.Fatalf("kubectl scale: %v\n%s", err, out)
	}
	wantReplicas(t, ns, "scaled", 5)
	// The short name works too.
	if out, err := testEnv.Kubectl(ctx, "scale", "-n", ns, "mla/scaled", "--replicas=0"); err != nil {
		t.Fatalf("kubectl scale mla/: %v\n%s", err, out)
	}
	wantReplicas(t, ns, "scaled", 0)
}

func wantReplicas(t *testing.T, ns, name string, want int32) {
	t.Helper()
	got := &v1alpha1.MLAService{}
	if err := testEnv.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, got); err != nil {
		t.Fatal(err)
	}
	if ptr.Deref(got.Spec.Replicas, -1) != want {
		t.Fatalf("spec.replicas = %v, want %d", got.Spec.Replicas, want)
	}
}

// TestPrinterColumnsAndExplain checks what kubectl shows a person.
func TestPrinterColumnsAndExplain(t *testing.T) {
	ctx := context.Background()
	ns := testEnv.Namespace(t)
	if err := testEnv.Client.Create(ctx, builders.MLAService(ns, "shown").Obj()); err != nil {
		t.Fatal(err)
	}
	out, err := testEnv.Kubectl(ctx, "get", "mla", "-n", ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, col := range []string{"READY", "REPLICAS", "CAPACITY", "UTILIZATION", "MAX CONTEXT", "AGE", "shown"} {
		if !strings.Contains(out, col) {
			t.Errorf("kubectl get mla lacks %q:\n%s", col, out)
		}
	}
	out, err = testEnv.Kubectl(ctx, "explain", "mlaservice.spec.contextLength")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "longest sequence") {
		t.Errorf("kubectl explain lacks the field's documentation:\n%s", out)
	}
}

// TestDefaultInstallDryRun applies config/default with a server-side dry
// run: the CRD, RBAC and Deployment are all valid objects.
func TestDefaultInstallDryRun(t *testing.T) {
	ctx := context.Background()
	if _, err := os.Stat(filepath.Join(testEnv.Root, "config", "rbac", "role.yaml")); err != nil {
		t.Fatalf("config/rbac/role.yaml missing (make manifests generates it): %v", err)
	}
	// Namespaced objects need their namespace to exist, even in a dry run.
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mla-system"}}
	if err := testEnv.Client.Create(ctx, nsObj); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	out, err := testEnv.Kubectl(ctx, "apply", "--server-side", "--dry-run=server", "--field-manager=integration", "-k", filepath.Join(testEnv.Root, "config", "default"))
	if err != nil {
		t.Fatalf("config/default dry run failed: %v\n%s", err, out)
	}
	for _, want := range []string{"customresourcedefinition.apiextensions.k8s.io/mlaservices.inference.mla.dev", "deployment.apps/mla-operator-controller-manager", "clusterrole.rbac.authorization.k8s.io/mla-operator-mla-operator-manager"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
}
