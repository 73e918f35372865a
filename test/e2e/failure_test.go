package e2e

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// 5. A deleted node or a killed worker process: workers are replaced and
// capacity comes back. Not parallel: it takes a node away from the pool it
// runs on, and Go runs sequential tests before the parallel ones start.
func TestWorkersComeBackAfterNodeLossAndProcessKill(t *testing.T) {
	ns := namespace(t)
	const replicas = 2
	apply(t, manifest(liteService(ns, "resilient", "h100", replicas).Obj()))
	before := readyWith(t, ns, "resilient", replicas, 3*time.Minute)
	capacityBefore := before.Status.KVCache.CapacityTokens

	t.Run("node deleted", func(t *testing.T) {
		victim := workers(t, ns, "resilient")[0]
		node := victim.Spec.NodeName
		if err := k8s.Delete(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}); err != nil {
			t.Fatalf("deleting node %s: %v", node, err)
		}
		t.Cleanup(func() {
			if err := cluster.RecreateNode(context.Background(), node); err != nil {
				t.Errorf("recreating node %s: %v", node, err)
			}
		})
		eventually(t, 3*time.Minute, "a replacement on another node", func() error {
			svc := getService(t, ns, "resilient")
			if svc.Status.ReadyReplicas != replicas {
				return fmt.Errorf("%d of %d ready", svc.Status.ReadyReplicas, replicas)
			}
			for _, p := range workers(t, ns, "resilient") {
				if p.UID == victim.UID || p.Spec.NodeName == node {
					return fmt.Errorf("worker %s still on deleted node %s", p.Name, node)
				}
			}
			if svc.Status.KVCache.CapacityTokens != capacityBefore {
				return fmt.Errorf("capacity %d tokens, was %d", svc.Status.KVCache.CapacityTokens, capacityBefore)
			}
			for _, w := range svc.Status.Workers {
				if w.Node == node {
					return fmt.Errorf("status still lists worker %s on deleted node %s", w.Pod, node)
				}
			}
			return statusMatchesPods(t, svc)
		})
		checkCapacity(t, getService(t, ns, "resilient"))
	})

	t.Run("worker process killed", func(t *testing.T) {
		victim := workers(t, ns, "resilient")[0]
		var pid int
		if len(victim.Status.ContainerStatuses) == 0 {
			t.Fatalf("worker %s has no container status", victim.Name)
		}
		if _, err := fmt.Sscanf(victim.Status.ContainerStatuses[0].ContainerID, "mla-local://%d", &pid); err != nil {
			t.Fatalf("container ID %q: %v", victim.Status.ContainerStatuses[0].ContainerID, err)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("killing worker process %d: %v", pid, err)
		}
		// Either the pod restarts its container or the operator replaces
		// the pod; both must end with every worker ready and the capacity
		// back.
		eventually(t, 2*time.Minute, "the killed worker back", func() error {
			svc := getService(t, ns, "resilient")
			if svc.Status.ReadyReplicas != replicas || svc.Status.KVCache.CapacityTokens != capacityBefore {
				return fmt.Errorf("%d of %d ready, capacity %d of %d tokens", svc.Status.ReadyReplicas, replicas, svc.Status.KVCache.CapacityTokens, capacityBefore)
			}
			for _, p := range workers(t, ns, "resilient") {
				if p.UID == victim.UID && (len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].RestartCount == 0) {
					return fmt.Errorf("worker %s not restarted yet", p.Name)
				}
			}
			return statusMatchesPods(t, svc)
		})
		checkCapacity(t, getService(t, ns, "resilient"))
	})
}
