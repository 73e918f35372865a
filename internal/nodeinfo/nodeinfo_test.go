package nodeinfo

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/test/builders"
)

func TestGPUOf(t *testing.T) {
	h100 := builders.GPUNode("n", builders.H100, 8).Obj()
	g, err := GPUOf(h100)
	if err != nil {
		t.Fatal(err)
	}
	want := GPU{Product: builders.H100.Product, MemoryMiB: 81559, Count: 8, ComputeMajor: 9}
	if g != want {
		t.Fatalf("GPUOf = %+v, want %+v", g, want)
	}
	for name, tc := range map[string]struct {
		node    *corev1.Node
		wantErr string
	}{
		"no labels":      {builders.Node("cpu").Obj(), v1alpha1.LabelGPUProduct},
		"no memory":      {builders.Node("m").Label(v1alpha1.LabelGPUProduct, "X").Obj(), v1alpha1.LabelGPUMemoryMiB},
		"bad memory":     {builders.GPUNode("m", builders.L4, 1).Label(v1alpha1.LabelGPUMemoryMiB, "lots").Obj(), "not a positive"},
		"bad compute":    {builders.GPUNode("m", builders.L4, 1).Label(v1alpha1.LabelGPUComputeMajor, "x").Obj(), v1alpha1.LabelGPUComputeMajor},
		"negative count": {builders.GPUNode("m", builders.L4, 1).Label(v1alpha1.LabelGPUCount, "-1").Obj(), v1alpha1.LabelGPUCount},
	} {
		if _, err := GPUOf(tc.node); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: err = %v, want one mentioning %q", name, err, tc.wantErr)
		}
	}
}

func TestComputeCapability(t *testing.T) {
	for _, tc := range []struct {
		gpu  GPU
		min  string
		want bool
	}{
		{GPU{ComputeMajor: 9, ComputeMinor: 0}, "9.0", true},
		{GPU{ComputeMajor: 8, ComputeMinor: 9}, "9.0", false},
		{GPU{ComputeMajor: 8, ComputeMinor: 9}, "8.6", true},
		{GPU{ComputeMajor: 8, ComputeMinor: 0}, "8.6", false},
		{GPU{ComputeMajor: 10, ComputeMinor: 0}, "9.0", true},
	} {
		cc, err := ParseComputeCapability(tc.min)
		if err != nil {
			t.Fatal(err)
		}
		if got := tc.gpu.AtLeast(cc); got != tc.want {
			t.Errorf("%d.%d at least %s = %v, want %v", tc.gpu.ComputeMajor, tc.gpu.ComputeMinor, tc.min, got, tc.want)
		}
	}
	for _, bad := range []string{"9", "a.b", "9.", "-1.0"} {
		if _, err := ParseComputeCapability(bad); err == nil {
			t.Errorf("ParseComputeCapability(%q) succeeded", bad)
		}
	}
}

func TestRequestedByNodeCountsEveryNonTerminalPod(t *testing.T) {
	pinned := builders.Pod("ns", "pinned").GPURequest(2).Obj()
	pinned.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{"b"}}},
		}}},
	}}
	limitOnly := builders.Pod("ns", "limit-only").OnNode("a").Obj()
	limitOnly.Spec.Containers[0].Resources.Limits = corev1.ResourceList{v1alpha1.DefaultGPUResource: resource.MustParse("3")}
	withInit := builders.Pod("ns", "init").OnNode("c").GPURequest(1).Obj()
	withInit.Spec.InitContainers = []corev1.Container{
		{Name: "big-init", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{v1alpha1.DefaultGPUResource: resource.MustParse("4")}}},
	}
	sidecar := builders.Pod("ns", "sidecar").OnNode("d").GPURequest(1).Obj()
	sidecar.Spec.InitContainers = []corev1.Container{{Name: "side", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways),
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{v1alpha1.DefaultGPUResource: resource.MustParse("1")}}}}
	pods := []corev1.Pod{
		*builders.Pod("ns", "other-team").OnNode("a").GPURequest(1).Obj(),
		*limitOnly,
		*builders.Pod("ns", "done").OnNode("a").GPURequest(8).Phase(corev1.PodSucceeded).Obj(),
		*builders.Pod("ns", "failed").OnNode("a").GPURequest(8).Phase(corev1.PodFailed).Obj(),
		*builders.Pod("ns", "unbound").GPURequest(8).Obj(),
		*pinned,
		*withInit,
		*sidecar,
	}
	got := RequestedByNode(pods, v1alpha1.DefaultGPUResource)
	want := map[string]int64{"a": 4, "b": 2, "c": 4, "d": 2}
	if len(got) != len(want) {
		t.Fatalf("RequestedByNode = %v, want %v", got, want)
	}
	for n, w := range want {
		if got[n] != w {
			t.Errorf("node %s: %d requested, want %d", n, got[n], w)
		}
	}
}

func TestReady(t *testing.T) {
	if !Ready(builders.GPUNode("a", builders.L4, 1).Obj()) {
		t.Error("ready node not Ready")
	}
	if Ready(builders.GPUNode("a", builders.L4, 1).NotReady().Obj()) {
		t.Error("NotReady node Ready")
	}
	n := builders.Node("none").Obj()
	n.Status.Conditions = nil
	if Ready(n) {
		t.Error("node without conditions Ready")
	}
}
