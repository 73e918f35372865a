package workerpod

import (
	"flag"
	"io"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/capacity"
	"github.com/mla-operator/mla-operator/internal/nodeinfo"
	"github.com/mla-operator/mla-operator/test/builders"
	"github.com/mla-operator/mla-operator/worker/settings"
)

func build(t *testing.T, svc *v1alpha1.MLAService) (*corev1.Pod, capacity.Config) {
	t.Helper()
	svc.UID = types.UID("uid-1")
	cfg, err := capacity.FromSpec(&svc.Spec)
	if err != nil {
		t.Fatal(err)
	}
	gpu := capacity.GPU{Product: builders.H100.Product, MemoryBytes: builders.H100.MemoryMiB * capacity.MiB}
	rev := Revision(&svc.Spec)
	return Build(Params{Service: svc, Config: cfg, Revision: rev, Name: Name(svc.Name, rev, 0), Node: "gpu-7",
		GPUProduct: gpu.Product, Estimate: cfg.Estimate(gpu)}), cfg
}

// The worker rebuilds, from the pod's environment alone, the capacity
// configuration the operator placed it with.
func TestEnvRebuildsTheSameCapacityConfig(t *testing.T) {
	for name, svc := range map[string]*v1alpha1.MLAService{
		"v2-lite defaults": builders.MLAService("ns", "lite").Obj(),
		"v3 on 8 GPUs":     builders.MLAService("ns", "v3").Preset(v1alpha1.PresetDeepSeekV3).GPUs(8).Context(32768).Utilization(0.93).Reserve("3Gi").Obj(),
		"explicit geometry": builders.MLAService("ns", "custom").Geometry(v1alpha1.ModelGeometry{Layers: 12, AttentionHeads: 32, QKNopeHeadDim: 96}).
			Weights("10Gi").Context(1000).Obj(),
	} {
		t.Run(name, func(t *testing.T) {
			pod, want := build(t, svc)
			env := map[string]string{}
			for _, e := range pod.Spec.Containers[0].Env {
				if e.ValueFrom == nil {
					env[e.Name] = e.Value
				}
			}
			fs := flag.NewFlagSet("worker", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			s, envErr := settings.Register(fs, func(k string) string { return env[k] })
			if err := fs.Parse(nil); err != nil {
				t.Fatal(err)
			}
			if err := envErr(); err != nil {
				t.Fatal(err)
			}
			got, err := s.Capacity()
			if err != nil {
				t.Fatal(err)
			}
			// The YaRN fields and the position limit reach the worker only
			// as the softmax scale they produce, checked below; they do not
			// size the cache.
			wantScale := want.Model.SoftmaxScale()
			want.Model.MaxPositionEmbeddings, want.Model.RopeScalingFactor, want.Model.MScaleAllDim = 0, 0, 0
			if got != want {
				t.Fatalf("worker rebuilt %+v, operator placed with %+v", got, want)
			}
			if s.SoftmaxScale != wantScale {
				t.Errorf("softmax scale %g, want %g", s.SoftmaxScale, wantScale)
			}
			if s.ContextLength != svc.Spec.ContextLength || s.ServiceName != svc.Name {
				t.Errorf("context %d service %q", s.ContextLength, s.ServiceName)
			}
		})
	}
}

func TestPodShape(t *testing.T) {
	svc := builders.MLAService("ns", "svc").GPUs(2).
		Toleration(corev1.Toleration{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists}).
		Mutate(func(s *v1alpha1.MLAService) {
			s.Spec.Worker.Env = []corev1.EnvVar{{Name: v1alpha1.EnvPort, Value: "9999"}, {Name: "EXTRA", Value: "1"}}
			s.Spec.Worker.Labels = map[string]string{"team": "x", v1alpha1.LabelService: "spoofed"}
			s.Spec.Worker.PriorityClassName = "inference"
			s.Spec.Worker.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
		}).Obj()
	pod, cfg := build(t, svc)

	if n := nodeinfo.PinnedNode(pod); n != "gpu-7" || pod.Spec.NodeName != "" {
		t.Errorf("pinned to %q with nodeName %q; want affinity to gpu-7 and binding left to the scheduler", n, pod.Spec.NodeName)
	}
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.UID != svc.UID || ref.Kind != "MLAService" || !*ref.BlockOwnerDeletion {
		t.Errorf("controller reference %+v", ref)
	}
	if pod.Labels[v1alpha1.LabelService] != "svc" || pod.Labels["team"] != "x" || pod.Labels[v1alpha1.LabelComponent] != v1alpha1.ComponentWorker ||
		pod.Labels[v1alpha1.LabelManagedBy] != v1alpha1.ManagedByValue || pod.Labels[v1alpha1.LabelRevision] != Revision(&svc.Spec) {
		t.Errorf("labels %v", pod.Labels)
	}
	est := cfg.Estimate(capacity.GPU{Product: builders.H100.Product, MemoryBytes: builders.H100.MemoryMiB * capacity.MiB})
	if pod.Annotations[v1alpha1.AnnotationPredictedTokens] != strconv.FormatInt(est.Tokens, 10) ||
		pod.Annotations[v1alpha1.AnnotationGPUProduct] != builders.H100.Product {
		t.Errorf("annotations %v", pod.Annotations)
	}
	if got := nodeinfo.PodRequest(pod, v1alpha1.DefaultGPUResource); got != 2 {
		t.Errorf("requests %d GPUs, want 2", got)
	}
	c := pod.Spec.Containers[0]
	if c.Resources.Limits.Name(v1alpha1.DefaultGPUResource, "").Value() != 2 {
		t.Errorf("GPU limit %v", c.Resources.Limits)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != PortName {
		t.Errorf("ports %v", c.Ports)
	}
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Port.StrVal != PortName {
			t.Errorf("%s probe %+v", name, p)
		}
	}
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("probe paths %s %s", c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path)
	}
	sc := c.SecurityContext
	if !*sc.RunAsNonRoot || *sc.AllowPrivilegeEscalation || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" ||
		sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault || !*pod.Spec.SecurityContext.RunAsNonRoot {
		t.Errorf("security context %+v", sc)
	}
	env := map[string]corev1.EnvVar{}
	count := map[string]int{}
	for _, e := range c.Env {
		env[e.Name] = e
		count[e.Name]++
	}
	if env[v1alpha1.EnvPort].Value != "9999" || count[v1alpha1.EnvPort] != 1 || env["EXTRA"].Value != "1" {
		t.Errorf("user env does not override ours: %v", c.Env)
	}
	for name, path := range map[string]string{v1alpha1.EnvPodName: "metadata.name", v1alpha1.EnvPodNamespace: "metadata.namespace",
		v1alpha1.EnvNodeName: "spec.nodeName", v1alpha1.EnvPodIP: "status.podIP"} {
		if e := env[name]; e.ValueFrom == nil || e.ValueFrom.FieldRef.FieldPath != path {
			t.Errorf("%s = %+v, want the downward API's %s", name, e, path)
		}
	}
	if pod.Spec.ServiceAccountName != DefaultServiceAccount || pod.Spec.PriorityClassName != "inference" ||
		len(pod.Spec.ImagePullSecrets) != 1 || len(pod.Spec.Tolerations) != 1 {
		t.Errorf("pod settings %+v", pod.Spec)
	}
	if errs := validation.IsDNS1123Subdomain(pod.Name); len(errs) > 0 {
		t.Errorf("name %q: %v", pod.Name, errs)
	}
}

func TestRevision(t *testing.T) {
	base := builders.MLAService("ns", "svc")
	rev := Revision(&base.Obj().Spec)
	if rev != Revision(&base.Obj().Spec) {
		t.Fatal("revision is not stable")
	}
	rolls := map[string]*v1alpha1.MLAService{
		"context length": builders.MLAService("ns", "svc").Context(8192).Obj(),
		"image":          builders.MLAService("ns", "svc").Image("worker:v2").Obj(),
		"page size":      builders.MLAService("ns", "svc").PageSize(128).Obj(),
		"utilization":    builders.MLAService("ns", "svc").Utilization(0.8).Obj(),
		"geometry":       builders.MLAService("ns", "svc").Preset(v1alpha1.PresetDeepSeekV3).Obj(),
		"gpus":           builders.MLAService("ns", "svc").GPUs(2).Obj(),
		"args":           builders.MLAService("ns", "svc").WorkerArgs("--verbose").Obj(),
	}
	for name, svc := range rolls {
		if Revision(&svc.Spec) == rev {
			t.Errorf("changing %s keeps the revision", name)
		}
	}
	keeps := map[string]*v1alpha1.MLAService{
		"replicas":  builders.MLAService("ns", "svc").Replicas(7).Obj(),
		"strategy":  builders.MLAService("ns", "svc").Strategy(v1alpha1.Spread).Obj(),
		"rollout":   builders.MLAService("ns", "svc").Rollout(2, 1).Obj(),
		"selector":  builders.MLAService("ns", "svc").NodeSelector("a", "b").Obj(),
		"autoscale": builders.MLAService("ns", "svc").Autoscaling(1, 3, 0.5).Obj(),
	}
	for name, svc := range keeps {
		if Revision(&svc.Spec) != rev {
			t.Errorf("changing %s rolls the workers", name)
		}
	}
}

func TestTerminationGrace(t *testing.T) {
	if g := TerminationGraceSeconds(&builders.MLAService("ns", "s").Obj().Spec); g != int64(DefaultTerminationGrace/time.Second) {
		t.Errorf("default grace %d", g)
	}
	long := builders.MLAService("ns", "s").Windows(metav1.Duration{}, metav1.Duration{}, metav1.Duration{Duration: 20 * time.Minute}).Obj()
	if g := TerminationGraceSeconds(&long.Spec); g != 1200 {
		t.Errorf("grace with a 20m drain %d, want 1200", g)
	}
	set := builders.MLAService("ns", "s").Mutate(func(s *v1alpha1.MLAService) { s.Spec.Worker.TerminationGracePeriodSeconds = ptr.To[int64](42) }).Obj()
	if g := TerminationGraceSeconds(&set.Spec); g != 42 {
		t.Errorf("explicit grace %d", g)
	}
}
