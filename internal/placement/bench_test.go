package placement

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/capacity"
	"github.com/mla-operator/mla-operator/test/builders"
)

// BenchmarkPlace100ServicesOn1000Nodes places 100 services of 4 workers,
// one after the other, on 1,000 heterogeneous 8-GPU nodes in 3 zones; each
// service sees the workers of those placed before it. One op is all 100.
func BenchmarkPlace100ServicesOn1000Nodes(b *testing.B) {
	kinds := []builders.GPUKind{builders.H200, builders.H100, builders.A100_40G, builders.L4}
	strategies := []v1alpha1.PlacementStrategy{v1alpha1.MostCapacity, v1alpha1.BinPack, v1alpha1.Spread}
	nodes := make([]corev1.Node, 1000)
	for i := range nodes {
		nodes[i] = *builders.GPUNode(fmt.Sprintf("node-%04d", i), kinds[i%len(kinds)], 8).Zone(fmt.Sprintf("zone-%d", i%3)).Obj()
	}
	type service struct {
		svc *v1alpha1.MLAService
		cfg capacity.Config
	}
	services := make([]service, 100)
	for i := range services {
		svc := builders.MLAService(fmt.Sprintf("ns-%d", i%10), fmt.Sprintf("svc-%d", i)).
			Preset(v1alpha1.PresetDeepSeekV2Lite).Context(int64(4096 * (1 + i%8))).Strategy(strategies[i%3]).Obj()
		cfg, err := capacity.FromSpec(&svc.Spec)
		if err != nil {
			b.Fatal(err)
		}
		services[i] = service{svc, cfg}
	}
	b.ReportAllocs()
	for b.Loop() {
		var pods []corev1.Pod
		placed := 0
		for _, s := range services {
			res := Place(Request{Service: s.svc, Config: s.cfg, Nodes: nodes, Pods: pods, Count: 4})
			for j, a := range res.Assignments {
				pods = append(pods, *builders.Pod(s.svc.Namespace, fmt.Sprintf("%s-%d", s.svc.Name, j)).
					WorkerOf(s.svc.Name).OnNode(a.Node).GPURequest(1).Obj())
			}
			placed += len(res.Assignments)
		}
		if placed != 400 {
			b.Fatalf("placed %d workers, want 400", placed)
		}
	}
}
