package integration

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/controllers"
	"github.com/mla-operator/mla-operator/internal/nodeinfo"
	"github.com/mla-operator/mla-operator/test/builders"
)

// An MLAService gets its workers on the nodes its strategy picks, pinned
// there and owned by the service.
func TestControllerPlacesWorkersByStrategy(t *testing.T) {
	for _, tc := range []struct {
		strategy v1alpha1.PlacementStrategy
		want     map[string]int
	}{
		// The H200 holds the most tokens: both its free GPUs, then an H100.
		{v1alpha1.MostCapacity, map[string]int{"h200": 2, "h100-a": 1}},
		// The partly used H100 first, fullest first; whole nodes stay free.
		{v1alpha1.BinPack, map[string]int{"h100-b": 3}},
		// One per node, the largest GPUs first.
		{v1alpha1.Spread, map[string]int{"h200": 1, "h100-a": 1, "h100-b": 1}},
	} {
		t.Run(string(tc.strategy), func(t *testing.T) {
			ns := testEnv.Namespace(t)
			createNodes(t, ns,
				builders.GPUNode("h200", builders.H200, 2),
				builders.GPUNode("h100-a", builders.H100, 8),
				builders.GPUNode("h100-b", builders.H100, 8).Allocatable(4),
				builders.GPUNode("a100", builders.A100_40G, 8),
			)
			// Another team's pod holds one of h100-b's 4 allocatable GPUs.
			other := builders.Pod(ns, "training").OnNode(ns + "-h100-b").GPURequest(1).Obj()
			if err := testEnv.Client.Create(context.Background(), other); err != nil {
				t.Fatal(err)
			}
			startOperator(t, ns, controllers.Options{})
			svc := createService(t, builders.MLAService(ns, "lite").Replicas(3).Strategy(tc.strategy), ns)

			eventually(t, func() error {
				got := nodesOf(ns, workerPods(t, ns))
				if !maps.Equal(got, tc.want) {
					return fmt.Errorf("workers on %v, want %v", got, tc.want)
				}
				return nil
			})
			for _, p := range workerPods(t, ns) {
				ref := metav1.GetControllerOf(&p)
				if ref == nil || ref.UID != svc.UID {
					t.Errorf("pod %s controller %v, want the service", p.Name, ref)
				}
				if p.Spec.NodeName != "" || nodeinfo.PinnedNode(&p) == "" {
					t.Errorf("pod %s not pinned by affinity", p.Name)
				}
			}
			eventually(t, func() error {
				s := getService(t, ns, "lite")
				if s.Status.Replicas != 3 || len(s.Status.Workers) != 3 || len(s.Status.GPUProducts) != 3 {
					return fmt.Errorf("status replicas %d, %d workers, %d products", s.Status.Replicas, len(s.Status.Workers), len(s.Status.GPUProducts))
				}
				if c := condition(s, v1alpha1.ConditionContextLimitFeasible); c == nil || c.Status != metav1.ConditionTrue {
					return fmt.Errorf("ContextLimitFeasible %v", c)
				}
				return nil
			})
		})
	}
}

// A deleted node's workers are placed on the nodes that remain.
func TestControllerReplacesWorkersOfDeletedNode(t *testing.T) {
	ns := testEnv.Namespace(t)
	createNodes(t, ns, builders.GPUNode("a", builders.H100, 4), builders.GPUNode("b", builders.H100, 4))
	startOperator(t, ns, controllers.Options{})
	createService(t, builders.MLAService(ns, "lite").Replicas(4).Strategy(v1alpha1.Spread), ns)
	eventually(t, func() error {
		if got := nodesOf(ns, workerPods(t, ns)); !maps.Equal(got, map[string]int{"a": 2, "b": 2}) {
			return fmt.Errorf("workers on %v", got)
		}
		return nil
	})
	var node corev1.Node
	if err := testEnv.Client.Get(context.Background(), clientKey(ns+"-a"), &node); err != nil {
		t.Fatal(err)
	}
	if err := testEnv.Client.Delete(context.Background(), &node); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() error {
		if got := nodesOf(ns, workerPods(t, ns)); !maps.Equal(got, map[string]int{"b": 4}) {
			return fmt.Errorf("workers on %v, want all 4 on b", got)
		}
		return nil
	})
}

// A node NotReady beyond the grace loses its workers to the other nodes.
func TestControllerReplacesWorkersOfNotReadyNode(t *testing.T) {
	ns := testEnv.Namespace(t)
	createNodes(t, ns, builders.GPUNode("a", builders.H100, 2), builders.GPUNode("b", builders.H100, 2))
	startOperator(t, ns, controllers.Options{NodeLostGrace: 2 * time.Second})
	createService(t, builders.MLAService(ns, "lite").Replicas(2).Strategy(v1alpha1.Spread), ns)
	eventually(t, func() error {
		if got := nodesOf(ns, workerPods(t, ns)); !maps.Equal(got, map[string]int{"a": 1, "b": 1}) {
			return fmt.Errorf("workers on %v", got)
		}
		return nil
	})
	var node corev1.Node
	if err := testEnv.Client.Get(context.Background(), clientKey(ns+"-a"), &node); err != nil {
		t.Fatal(err)
	}
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionFalse,
		Reason: "KubeletStopped", LastTransitionTime: metav1.Now(), LastHeartbeatTime: metav1.Now()}}
	if err := testEnv.Client.Status().Update(context.Background(), &node); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() error {
		if got := nodesOf(ns, workerPods(t, ns)); !maps.Equal(got, map[string]int{"b": 2}) {
			return fmt.Errorf("workers on %v, want both on b", got)
		}
		return nil
	})
}

// A context no GPU can hold sets ContextLimitFeasible=False with what is
// needed and available, and creates no pod that could never start.
func TestControllerInfeasibleCreatesNoPods(t *testing.T) {
	for _, tc := range []struct {
		name   string
		svc    *builders.MLAServiceBuilder
		nodes  []*builders.NodeBuilder
		reason string
		parts  []string
	}{{
		name:   "V2-Lite full context on A100 40GB and L4",
		svc:    builders.MLAService("", "long").Context(163840),
		nodes:  []*builders.NodeBuilder{builders.GPUNode("a100", builders.A100_40G, 8), builders.GPUNode("l4", builders.L4, 4)},
		reason: v1alpha1.ReasonContextTooLong,
		parts:  []string{"NVIDIA-A100-SXM4-40GB", "163840 tokens needs", "GiB", "the longest context that fits is", "NVIDIA-L4", "no memory is left"},
	}, {
		name:   "V3 on one H100",
		svc:    builders.MLAService("", "v3").Preset(v1alpha1.PresetDeepSeekV3),
		nodes:  []*builders.NodeBuilder{builders.GPUNode("h100", builders.H100, 8)},
		reason: v1alpha1.ReasonContextTooLong,
		parts:  []string{"weights take", "Raise gpusPerWorker"},
	}, {
		name:   "fp8 KV cache",
		svc:    builders.MLAService("", "fp8").DType(v1alpha1.KVCacheFP8),
		nodes:  []*builders.NodeBuilder{builders.GPUNode("h100", builders.H100, 8)},
		reason: v1alpha1.ReasonUnsupportedKVDType,
		parts:  []string{"fp8"},
	}, {
		name:   "no GPU nodes",
		svc:    builders.MLAService("", "nogpu"),
		nodes:  []*builders.NodeBuilder{builders.Node("cpu")},
		reason: v1alpha1.ReasonNoGPUNodes,
		parts:  []string{"not a GPU node", "nvidia.com/gpu.product"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			ns := testEnv.Namespace(t)
			createNodes(t, ns, tc.nodes...)
			startOperator(t, ns, controllers.Options{})
			svc := createService(t, tc.svc.Replicas(2), ns)
			eventually(t, func() error {
				s := getService(t, ns, svc.Name)
				c := condition(s, v1alpha1.ConditionContextLimitFeasible)
				if c == nil || c.Reason != tc.reason || s.Status.ObservedGeneration != s.Generation {
					return fmt.Errorf("ContextLimitFeasible %+v", c)
				}
				for _, part := range tc.parts {
					if !strings.Contains(c.Message, part) {
						return fmt.Errorf("message %q lacks %q", c.Message, part)
					}
				}
				if d := condition(s, v1alpha1.ConditionDegraded); d == nil || d.Status != metav1.ConditionTrue {
					return fmt.Errorf("Degraded %+v", d)
				}
				return nil
			})
			// Nothing is created afterwards either.
			time.Sleep(2 * time.Second)
			if pods := workerPods(t, ns); len(pods) != 0 {
				t.Fatalf("%d pods created for an infeasible service", len(pods))
			}
		})
	}
}
