package clusterconfig

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/test/builders"
)

func TestDefaultMatchesTheGPUsOfThePlacementTables(t *testing.T) {
	c := Default()
	nodes, err := c.Nodes(PodCIDRs{Base: 20})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		kind  builders.GPUKind
		count int
		nodes int
	}{
		builders.H200.Product:     {builders.H200, 8, 2},
		builders.H100.Product:     {builders.H100, 8, 4},
		builders.A100_40G.Product: {builders.A100_40G, 8, 2},
		builders.L4.Product:       {builders.L4, 4, 2},
	}
	got := map[string]int{}
	for _, n := range nodes {
		product := n.Labels[v1alpha1.LabelGPUProduct]
		w, ok := want[product]
		if !ok {
			t.Fatalf("node %s has unexpected product %q", n.Name, product)
		}
		got[product]++
		// The builders' nodes are what the operator's unit tests place on;
		// the simulated ones must carry the same labels and resources.
		ref := builders.GPUNode(n.Name, w.kind, w.count).Obj()
		for _, k := range []string{v1alpha1.LabelGPUProduct, v1alpha1.LabelGPUMemoryMiB, v1alpha1.LabelGPUCount, v1alpha1.LabelGPUComputeMajor, v1alpha1.LabelGPUComputeMinor} {
			if n.Labels[k] != ref.Labels[k] {
				t.Errorf("node %s label %s = %q, want %q", n.Name, k, n.Labels[k], ref.Labels[k])
			}
		}
		gpus := n.Status.Allocatable[v1alpha1.DefaultGPUResource]
		if gpus.Value() != int64(w.count) {
			t.Errorf("node %s allocatable GPUs = %s, want %d", n.Name, gpus.String(), w.count)
		}
		if n.Labels[corev1.LabelTopologyZone] == "" {
			t.Errorf("node %s has no zone", n.Name)
		}
	}
	for product, w := range want {
		if got[product] != w.nodes {
			t.Errorf("%s nodes = %d, want %d", product, got[product], w.nodes)
		}
	}
}

func TestNodesGetDistinctLoopbackPodCIDRs(t *testing.T) {
	c := &Cluster{Pools: []Pool{
		{Name: "a", Count: 300, GPU: GPU{Product: "X", MemoryMiB: 1024, Count: 1, ComputeCapability: "9.0"}},
	}}
	cidrs := PodCIDRs{Base: 100}
	nodes, err := c.Nodes(cidrs)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{cidrs.Kwok().String(): "kwok"}
	for _, n := range nodes {
		if other, dup := seen[n.Spec.PodCIDR]; dup {
			t.Fatalf("node %s and %s share pod CIDR %s", n.Name, other, n.Spec.PodCIDR)
		}
		seen[n.Spec.PodCIDR] = n.Name
		if !strings.HasPrefix(n.Spec.PodCIDR, "127.") {
			t.Fatalf("node %s pod CIDR %s is not loopback", n.Name, n.Spec.PodCIDR)
		}
	}
	if got := nodes[299].Spec.PodCIDR; got != "127.101.44.0/24" {
		t.Errorf("node 299 pod CIDR = %s, want 127.101.44.0/24 (block 300 of base 100)", got)
	}
	if _, err := cidrs.ForNode(MaxNodes); err == nil {
		t.Error("ForNode(MaxNodes) did not fail")
	}
	for range 100 {
		r := RandomPodCIDRs()
		last, err := r.ForNode(MaxNodes - 1)
		if err != nil || !last.Addr().Is4() || last.Addr().As4()[1] < r.Base {
			t.Fatalf("random base %d: last block %v (%v) wraps around", r.Base, last, err)
		}
	}
}

func TestParseRejects(t *testing.T) {
	good := `pools:
- name: h100
  count: 1
  gpu: {product: NVIDIA-H100-80GB-HBM3, memoryMiB: 81559, count: 8, computeCapability: "9.0"}
`
	if _, err := Parse([]byte(good)); err != nil {
		t.Fatalf("good file: %v", err)
	}
	cases := map[string]struct{ old, new, want string }{
		"unknown field":  {"count: 1", "count: 1\n  zones: [a]", "unknown field"},
		"bad pool name":  {"name: h100", "name: H100_x", "name"},
		"negative count": {"count: 1", "count: -1", "count must not be negative"},
		"no memory":      {"memoryMiB: 81559", "memoryMiB: 0", "memoryMiB must be positive"},
		"no gpus":        {"count: 8", "count: 0", "gpu.count must be positive"},
		"bad capability": {`"9.0"`, `"sm90"`, "computeCapability"},
		"bad product":    {"product: NVIDIA-H100-80GB-HBM3", "product: 'NVIDIA H100'", "not a valid label value"},
		"duplicate pool": {"pools:\n", "pools:\n- name: h100\n  count: 1\n  gpu: {product: X, memoryMiB: 1, count: 1, computeCapability: \"9.0\"}\n", "duplicate pool name"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			data := strings.Replace(good, tc.old, tc.new, 1)
			_, err := Parse([]byte(data))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v, want error containing %q\n%s", err, tc.want, data)
			}
		})
	}
	if _, err := Parse([]byte("pools: []")); err == nil {
		t.Error("empty inventory accepted")
	}
}

func TestGPUOfReadsTheLabelsBack(t *testing.T) {
	nodes, err := Default().Nodes(PodCIDRs{Base: 30})
	if err != nil {
		t.Fatal(err)
	}
	product, mem, err := GPUOf(nodes[0])
	if err != nil || product != builders.H200.Product || mem != builders.H200.MemoryMiB {
		t.Fatalf("GPUOf = %q, %d, %v; want %q, %d", product, mem, err, builders.H200.Product, builders.H200.MemoryMiB)
	}
	if _, _, err := GPUOf(builders.Node("cpu").Obj()); err == nil {
		t.Error("GPUOf on a node without GPUs did not fail")
	}
}
