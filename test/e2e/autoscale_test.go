package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/worker/client"
	"github.com/mla-operator/mla-operator/worker/report"
)

// 4. Load above the target scales the service up; once it stops, the
// service scales down after the window, draining the worker it removes.
func TestAutoscalingFollowsKVLoad(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	const target = 0.5
	svc := liteService(ns, "auto", "a100-40g", 1).
		Autoscaling(1, 3, target).
		Windows(metav1.Duration{Duration: 2 * time.Second}, metav1.Duration{Duration: 15 * time.Second}, metav1.Duration{Duration: 5 * time.Second}).
		Obj()
	apply(t, manifest(svc))
	readyWith(t, ns, "auto", 1, 3*time.Minute)

	pods := workers(t, ns, "auto")
	if len(pods) != 1 {
		t.Fatalf("%d workers, want 1", len(pods))
	}
	first := pods[0]
	port := int32(8080)
	if svc.Spec.Worker.Port != 0 {
		port = svc.Spec.Worker.Port
	}
	// The load generator talks to the worker at its pod IP, as a router
	// would: a loopback address the worker process binds.
	wc := client.New("http://"+net.JoinHostPort(first.Status.PodIP, strconv.Itoa(int(port))), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	capa, err := wc.Capacity(ctx)
	if err != nil {
		t.Fatalf("worker capacity: %v", err)
	}
	// The worker reserves a sequence's declared maximum up front: declared
	// lengths are the load. Fill to 80 %, well above the 50 % target.
	seqLen := min(svc.Spec.ContextLength, capa.MaxContextLength)
	var seqs []uint64
	var reserved int64
	for float64(reserved) < 0.8*float64(capa.CapacityTokens) {
		s, err := wc.CreateSequence(ctx, seqLen)
		if err != nil {
			t.Fatalf("creating sequence %d (reserved %d of %d tokens): %v", len(seqs)+1, reserved, capa.CapacityTokens, err)
		}
		seqs = append(seqs, s.ID)
		reserved += s.ReservedTokens
	}
	t.Logf("holding %d sequences, %d of %d tokens", len(seqs), reserved, capa.CapacityTokens)

	eventually(t, 2*time.Minute, "scale up above the target", func() error {
		s := getService(t, ns, "auto")
		if s.Status.ReadyReplicas < 2 {
			return fmt.Errorf("%d ready workers at utilization %.2f", s.Status.ReadyReplicas, s.Status.KVCache.Utilization)
		}
		return nil
	})
	up := getService(t, ns, "auto")
	if *up.Spec.Replicas < 2 || *up.Spec.Replicas > 3 {
		t.Errorf("spec.replicas %d after scale-up, want 2 or 3 (max 3)", *up.Spec.Replicas)
	}

	// Watch every version of the workers from here on: a drained worker
	// that holds nothing exits at once, so polling could miss its last
	// versions. Removed workers must have been drained first (the
	// operator's drain annotation or a draining report) and deleted with a
	// grace period rather than killed outright.
	watch, err := cluster.Client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: v1alpha1.LabelService + "=auto"})
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Stop()
	var mu sync.Mutex
	drained, graceful, removed := map[string]bool{}, map[string]bool{}, map[string]bool{}
	go func() {
		for ev := range watch.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			mu.Lock()
			if p.Annotations[v1alpha1.AnnotationDrainReason] != "" {
				drained[p.Name] = true
			}
			if r, ok, _ := report.Parse(p.Annotations); ok && r.Draining {
				drained[p.Name] = true
			}
			if p.DeletionTimestamp != nil && p.DeletionGracePeriodSeconds != nil && *p.DeletionGracePeriodSeconds > 0 {
				graceful[p.Name] = true
			}
			if ev.Type == "DELETED" {
				removed[p.Name] = true
			}
			mu.Unlock()
		}
	}()

	for _, id := range seqs {
		if err := wc.FreeSequence(ctx, id); err != nil {
			t.Fatalf("freeing sequence %d: %v", id, err)
		}
	}
	loadStopped := time.Now()

	eventually(t, 3*time.Minute, "scale down after the window", func() error {
		s := getService(t, ns, "auto")
		live := len(workers(t, ns, "auto"))
		if live != 1 || s.Status.Replicas != 1 || s.Status.ReadyReplicas != 1 {
			return fmt.Errorf("%d live worker pods, status %d/%d ready", live, s.Status.ReadyReplicas, s.Status.Replicas)
		}
		return statusMatchesPods(t, s)
	})
	if el := time.Since(loadStopped); el < 15*time.Second {
		t.Errorf("scaled down %s after the load stopped, inside the 15 s window", el.Round(time.Second))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(removed) == 0 {
		t.Error("no worker was removed on scale-down")
	}
	for name := range removed {
		if !drained[name] {
			t.Errorf("worker %s was removed without being drained first", name)
		}
		if !graceful[name] {
			t.Errorf("worker %s was deleted without a grace period to drain in", name)
		}
	}
}
