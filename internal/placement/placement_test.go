package placement

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/capacity"
	"github.com/mla-operator/mla-operator/test/builders"
)

func node(name string, kind builders.GPUKind, gpus int) *builders.NodeBuilder {
	return builders.GPUNode(name, kind, gpus)
}

// busy is a pod of another team holding n GPUs of a node.
func busy(nodeName string, n int) corev1.Pod {
	return *builders.Pod("other", "busy-"+nodeName).OnNode(nodeName).GPURequest(n).Phase(corev1.PodRunning).Obj()
}

// worker is an existing worker of service "svc" in namespace "ns".
func worker(name, nodeName string, gpus int) corev1.Pod {
	return *builders.Pod("ns", name).WorkerOf("svc").OnNode(nodeName).GPURequest(gpus).Running(true).Obj()
}

func objs(bs ...*builders.NodeBuilder) []corev1.Node {
	out := make([]corev1.Node, len(bs))
	for i, b := range bs {
		out[i] = *b.Obj()
	}
	return out
}

func lite() *builders.MLAServiceBuilder {
	return builders.MLAService("ns", "svc").Preset(v1alpha1.PresetDeepSeekV2Lite).Context(4096)
}

func v3() *builders.MLAServiceBuilder {
	return builders.MLAService("ns", "svc").Preset(v1alpha1.PresetDeepSeekV3).ModelName("deepseek-ai/DeepSeek-V3").Context(4096)
}

// heterogeneous is the cluster most tables run on: one of each GPU, with
// mixed free counts.
func heterogeneous() []corev1.Node {
	return objs(
		node("h200-1", builders.H200, 8).Zone("a"),
		node("h100-1", builders.H100, 8).Zone("a"),
		node("h100-2", builders.H100, 8).Zone("b"),
		node("a100-1", builders.A100_40G, 8).Zone("b"),
		node("l4-1", builders.L4, 4).Zone("c"),
	)
}

func TestPlace(t *testing.T) {
	for _, tc := range []struct {
		name     string
		svc      *v1alpha1.MLAService
		nodes    []corev1.Node
		pods     []corev1.Pod
		count    int
		want     []string // nodes, in placement order
		unplaced int
		rejected map[string]string // node -> part of the reason
	}{{
		name:  "MostCapacity fills the largest GPUs first, then the next largest",
		svc:   lite().Obj(),
		nodes: heterogeneous(),
		pods:  []corev1.Pod{busy("h200-1", 6)},
		count: 4,
		want:  []string{"h200-1", "h200-1", "h100-1", "h100-2"},
	}, {
		name:     "MostCapacity spreads among equal GPUs before doubling up",
		svc:      lite().Obj(),
		nodes:    objs(node("h100-a", builders.H100, 2), node("h100-b", builders.H100, 2), node("h100-c", builders.H100, 1)),
		count:    6,
		want:     []string{"h100-a", "h100-b", "h100-c", "h100-a", "h100-b"},
		unplaced: 1,
	}, {
		name:  "V2-Lite at its full 163,840 context does not fit A100 40GB or L4",
		svc:   lite().Context(163840).Obj(),
		nodes: heterogeneous(),
		pods:  []corev1.Pod{busy("h200-1", 8), busy("h100-1", 8), busy("h100-2", 8)},
		count: 1, unplaced: 1,
		rejected: map[string]string{"a100-1": "does not fit", "l4-1": "does not fit", "h200-1": "0 of 8", "h100-2": "0 of 8"},
	}, {
		name:     "V3 on 8 GPUs fits only a whole H200 node",
		svc:      v3().GPUs(8).Obj(),
		nodes:    append(heterogeneous(), objs(node("h200-2", builders.H200, 8))...),
		pods:     []corev1.Pod{busy("h200-2", 1)},
		count:    2,
		want:     []string{"h200-1"},
		unplaced: 1,
		rejected: map[string]string{"h200-2": "7 of 8", "h100-1": "does not fit", "a100-1": "does not fit", "l4-1": "does not fit"},
	}, {
		name:     "V3 on one GPU fits nowhere",
		svc:      v3().Obj(),
		nodes:    heterogeneous(),
		count:    1,
		unplaced: 1,
		rejected: map[string]string{"h200-1": "does not fit", "l4-1": "does not fit"},
	}, {
		name:  "BinPack fills partly used nodes, fullest first, and keeps empty nodes whole",
		svc:   lite().Strategy(v1alpha1.BinPack).Obj(),
		nodes: objs(node("h100-a", builders.H100, 8), node("h100-b", builders.H100, 8), node("h100-c", builders.H100, 8), node("h200-a", builders.H200, 8)),
		pods:  []corev1.Pod{busy("h100-a", 2), worker("w0", "h100-c", 5)},
		count: 5,
		want:  []string{"h100-c", "h100-c", "h100-c", "h100-a", "h100-a"},
	}, {
		name:  "BinPack prefers the larger GPU among empty nodes",
		svc:   lite().Strategy(v1alpha1.BinPack).Obj(),
		nodes: objs(node("a100", builders.A100_40G, 2), node("h100", builders.H100, 2)),
		count: 3,
		want:  []string{"h100", "h100", "a100"},
	}, {
		name: "Spread takes empty nodes first, in the emptiest zones",
		svc:  lite().Strategy(v1alpha1.Spread).Obj(),
		nodes: objs(node("n1", builders.H100, 8).Zone("a"), node("n2", builders.H100, 8).Zone("a"),
			node("n3", builders.H100, 8).Zone("b"), node("n4", builders.H100, 8).Zone("c")),
		pods:  []corev1.Pod{worker("w0", "n1", 1)},
		count: 5,
		want:  []string{"n3", "n4", "n2", "n3", "n4"},
	}, {
		name:  "Spread counts only this service's workers, not other pods",
		svc:   lite().Strategy(v1alpha1.Spread).Obj(),
		nodes: objs(node("a", builders.H100, 4), node("b", builders.A100_40G, 4)),
		pods:  []corev1.Pod{busy("b", 3)},
		count: 3,
		want:  []string{"a", "b", "a"},
	}, {
		name: "eligibility: GFD labels, cordon, readiness, selector, taints, compute capability",
		svc: lite().NodeSelector("pool", "inference").MinComputeCapability("9.0").
			Toleration(corev1.Toleration{Key: "gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}).Obj(),
		nodes: objs(
			builders.Node("cpu-only").Label("pool", "inference"),
			node("cordoned", builders.H200, 8).Label("pool", "inference").Unschedulable(),
			node("down", builders.H200, 8).Label("pool", "inference").NotReady(),
			node("training", builders.H200, 8).Label("pool", "training"),
			node("dedicated", builders.H200, 8).Label("pool", "inference").Taint("team", "x", corev1.TaintEffectNoSchedule),
			node("evicting", builders.H200, 8).Label("pool", "inference").Taint("team", "x", corev1.TaintEffectNoExecute),
			node("ampere", builders.A100_40G, 8).Label("pool", "inference"),
			node("tolerated", builders.H100, 8).Label("pool", "inference").Taint("gpu", "true", corev1.TaintEffectNoSchedule),
			node("preferred", builders.H100, 8).Label("pool", "inference").Taint("busy", "true", corev1.TaintEffectPreferNoSchedule),
		),
		count: 2,
		want:  []string{"preferred", "tolerated"},
		rejected: map[string]string{
			"cpu-only": "not a GPU node", "cordoned": "unschedulable", "down": "not Ready", "training": "nodeSelector",
			"dedicated": "team=x:NoSchedule", "evicting": "team=x:NoExecute", "ampere": "compute capability 8.0",
		},
	}, {
		name:  "workers of two GPUs need two free GPUs on one node",
		svc:   lite().GPUs(2).Obj(),
		nodes: objs(node("h100-a", builders.H100, 8), node("h100-b", builders.H100, 8)),
		pods:  []corev1.Pod{busy("h100-a", 7), busy("h100-b", 5)},
		count: 2,
		want:  []string{"h100-b"}, unplaced: 1,
		rejected: map[string]string{"h100-a": "1 of 8"},
	}, {
		name:  "terminal pods free their GPUs, terminating ones do not",
		svc:   lite().Obj(),
		nodes: objs(node("a", builders.H100, 1), node("b", builders.H100, 1)),
		pods: []corev1.Pod{
			*builders.Pod("other", "done").OnNode("a").GPURequest(1).Phase(corev1.PodSucceeded).Obj(),
			terminating(worker("old", "b", 1)),
		},
		count: 2,
		want:  []string{"a"}, unplaced: 1,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := capacity.FromSpec(&tc.svc.Spec)
			if err != nil {
				t.Fatal(err)
			}
			res := Place(Request{Service: tc.svc, Config: cfg, Nodes: tc.nodes, Pods: tc.pods, Count: tc.count})
			var got []string
			for _, a := range res.Assignments {
				got = append(got, a.Node)
			}
			if !slices.Equal(got, tc.want) || res.Unplaced != tc.unplaced {
				t.Fatalf("placed on %v with %d unplaced, want %v with %d unplaced; rejected %v", got, res.Unplaced, tc.want, tc.unplaced, res.Rejected)
			}
			reasons := map[string]string{}
			for _, r := range res.Rejected {
				reasons[r.Node] = r.Reason
			}
			for n, want := range tc.rejected {
				if !strings.Contains(reasons[n], want) {
					t.Errorf("node %s rejected for %q, want a reason containing %q", n, reasons[n], want)
				}
			}
			for _, a := range res.Assignments {
				want := cfg.Estimate(capacity.GPU{Product: a.GPU.Product, MemoryBytes: a.GPU.MemoryMiB * capacity.MiB})
				if a.Estimate != want || a.Estimate.MaxContextLength() < tc.svc.Spec.ContextLength {
					t.Errorf("assignment on %s carries estimate %+v, want %+v fitting %d tokens", a.Node, a.Estimate, want, tc.svc.Spec.ContextLength)
				}
			}
			// Deterministic: the input order of nodes and pods does not matter.
			for range 5 {
				nodes, pods := slices.Clone(tc.nodes), slices.Clone(tc.pods)
				rand.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
				rand.Shuffle(len(pods), func(i, j int) { pods[i], pods[j] = pods[j], pods[i] })
				again := Place(Request{Service: tc.svc, Config: cfg, Nodes: nodes, Pods: pods, Count: tc.count})
				if !slices.Equal(again.Assignments, res.Assignments) {
					t.Fatalf("shuffled input placed %v, first %v", again.Assignments, res.Assignments)
				}
			}
		})
	}
}

func terminating(p corev1.Pod) corev1.Pod {
	now := metav1.Now()
	p.DeletionTimestamp = &now
	return p
}

func TestProductsSayWhatFitsWhere(t *testing.T) {
	svc := lite().Context(163840).Obj()
	cfg, err := capacity.FromSpec(&svc.Spec)
	if err != nil {
		t.Fatal(err)
	}
	nodes := append(heterogeneous(), objs(node("h100-3", builders.H100, 8).Unschedulable(), builders.Node("cpu"))...)
	res := Place(Request{Service: svc, Config: cfg, Nodes: nodes, Count: 0})
	wantNodes := map[string]int32{builders.H200.Product: 1, builders.H100.Product: 2, builders.A100_40G.Product: 1, builders.L4.Product: 1}
	if len(res.Products) != len(wantNodes) {
		t.Fatalf("products %+v, want %d", res.Products, len(wantNodes))
	}
	for i, p := range res.Products {
		est := cfg.Estimate(capacity.GPU{Product: p.Product, MemoryBytes: p.MemoryMiB * capacity.MiB})
		fits := est.MaxContextLength() >= svc.Spec.ContextLength
		if p.Nodes != wantNodes[p.Product] || p.TokensPerWorker != est.Tokens || p.MaxContextLength != est.MaxContextLength() || p.Feasible != fits {
			t.Errorf("product %+v, want %d nodes, %d tokens, feasible %v", p, wantNodes[p.Product], est.Tokens, fits)
		}
		if fits != (p.Message == "") {
			t.Errorf("product %s feasible=%v with message %q", p.Product, p.Feasible, p.Message)
		}
		if i > 0 && res.Products[i-1].TokensPerWorker < p.TokensPerWorker {
			t.Errorf("products not ordered by capacity: %s before %s", res.Products[i-1].Product, p.Product)
		}
	}
	if !res.Feasible() {
		t.Error("H200 and H100 fit, but the result is not feasible")
	}
	if len(res.ContextErrors) != 2 || res.ContextErrors[0].GPUProduct != builders.A100_40G.Product {
		t.Fatalf("context errors %v, want A100 then L4", res.ContextErrors)
	}
	a100 := res.ContextErrors[0]
	if a100.ContextLength != 163840 || a100.NeededBytes != cfg.SequenceBytes(163840) || a100.MaxContext >= 163840 {
		t.Errorf("A100 context error %+v", a100)
	}
}

func TestInfeasibleEverywhere(t *testing.T) {
	svc := v3().Obj()
	cfg, err := capacity.FromSpec(&svc.Spec)
	if err != nil {
		t.Fatal(err)
	}
	res := Place(Request{Service: svc, Config: cfg, Nodes: heterogeneous(), Count: 3})
	if res.Feasible() || res.Unplaced != 3 || len(res.Assignments) != 0 {
		t.Fatalf("V3 on one GPU: feasible=%v, %d placed, %d unplaced", res.Feasible(), len(res.Assignments), res.Unplaced)
	}
	if len(res.ContextErrors) != 4 {
		t.Fatalf("%d context errors, want one per product", len(res.ContextErrors))
	}
	for _, ce := range res.ContextErrors {
		if !strings.Contains(ce.Error(), "no memory is left for the KV cache") {
			t.Errorf("%s: %v", ce.GPUProduct, ce)
		}
	}
}
