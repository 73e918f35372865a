package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/controllers"
	"github.com/mla-operator/mla-operator/test/builders"
)

// A context-length change rolls the workers one at a time: never more than
// the desired count exist (maxSurge 0) and never fewer than desired - 1 are
// Ready (maxUnavailable 1).
func TestControllerRollsContextChangeOneAtATime(t *testing.T) {
	ns := testEnv.Namespace(t)
	createNodes(t, ns, builders.GPUNode("a", builders.H100, 2), builders.GPUNode("b", builders.H100, 2), builders.GPUNode("c", builders.H100, 2))
	startKubelet(t, ns, 500*time.Millisecond)
	startOperator(t, ns, controllers.Options{})
	createService(t, builders.MLAService(ns, "lite").Replicas(3).Strategy(v1alpha1.Spread), ns)
	eventually(t, func() error {
		if s := getService(t, ns, "lite"); s.Status.ReadyReplicas != 3 {
			return fmt.Errorf("%d ready", s.Status.ReadyReplicas)
		}
		return nil
	})

	wc, err := client.NewWithWatch(testEnv.Config, client.Options{Scheme: testEnv.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var initial corev1.PodList
	if err := wc.List(ctx, &initial, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	w, err := wc.Watch(ctx, &corev1.PodList{}, client.InNamespace(ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: initial.ResourceVersion}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	pods := map[string]*corev1.Pod{}
	for i := range initial.Items {
		pods[initial.Items[i].Name] = &initial.Items[i]
	}
	oldRevision := initial.Items[0].Labels[v1alpha1.LabelRevision]

	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s := getService(t, ns, "lite")
		s.Spec.ContextLength = 8192
		return testEnv.Client.Update(ctx, s)
	}); err != nil {
		t.Fatal(err)
	}

	deletions := 0
	for {
		select {
		case <-ctx.Done():
			t.Fatalf("rollout did not finish: %d deletions, pods %v", deletions, summary(pods))
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("watch closed")
			}
			pod, isPod := ev.Object.(*corev1.Pod)
			if !isPod {
				continue
			}
			if ev.Type == watch.Deleted {
				delete(pods, pod.Name)
				deletions++
			} else {
				pods[pod.Name] = pod
			}
			live, ready, updated := 0, 0, 0
			for _, p := range pods {
				if p.DeletionTimestamp != nil {
					continue
				}
				live++
				if podReady(p) {
					ready++
				}
				if p.Labels[v1alpha1.LabelRevision] != oldRevision && podReady(p) {
					updated++
				}
			}
			if live > 3 {
				t.Fatalf("%d live workers during the rollout, maxSurge is 0: %v", live, summary(pods))
			}
			if ready < 2 {
				t.Fatalf("%d ready workers during the rollout, maxUnavailable is 1: %v", ready, summary(pods))
			}
			if updated == 3 && live == 3 {
				for _, p := range pods {
					if got := envOf(p, v1alpha1.EnvContextLength); got != "8192" {
						t.Fatalf("updated pod %s has %s=%s", p.Name, v1alpha1.EnvContextLength, got)
					}
				}
				if deletions != 3 {
					t.Fatalf("%d deletions, want 3", deletions)
				}
				return
			}
		}
	}
}

func envOf(p *corev1.Pod, name string) string {
	for _, e := range p.Spec.Containers[0].Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func summary(pods map[string]*corev1.Pod) map[string]string {
	out := map[string]string{}
	for n, p := range pods {
		out[n] = fmt.Sprintf("ready=%v deleting=%v", podReady(p), p.DeletionTimestamp != nil)
	}
	return out
}

// Worker reports become the status: only Ready workers with a fresh,
// ready report count, and totals drop when reports go stale, without any
// further write.
func TestControllerAggregatesWorkerReports(t *testing.T) {
	ns, pods := startReportingService(t, "lite", 5)
	ctx := context.Background()
	now := time.Now()
	reports := []struct {
		ready  bool
		report *v1alpha1.Report // nil: the worker never reports
	}{
		{true, &v1alpha1.Report{CapacityTokens: 1000, UsedTokens: 250, ActiveSequences: 2, MaxContextLength: 1000, Ready: true}},
		{true, &v1alpha1.Report{CapacityTokens: 3000, UsedTokens: 500, ActiveSequences: 1, WaitingRequests: 4, MaxContextLength: 3000, Ready: true}},
		// Never reported: not counted. (A first report, whatever its
		// time says, is news to an operator that saw the pod without one:
		// staleness is judged by the operator's clock, see
		// TestControllerCountsAFirstReportFromANodeBehind.)
		{true, nil},
		// Pod not Ready: not counted.
		{false, &v1alpha1.Report{CapacityTokens: 7000, MaxContextLength: 7000, Ready: true}},
		// Draining: not counted.
		{true, &v1alpha1.Report{CapacityTokens: 5000, UsedTokens: 100, MaxContextLength: 5000, Ready: false, Draining: true}},
	}
	for i, r := range reports {
		if r.report != nil {
			if r.report.Time.IsZero() {
				r.report.Time = metav1.NewTime(now)
			}
			if err := setReport(ctx, &pods[i], *r.report); err != nil {
				t.Fatal(err)
			}
		}
		if r.ready {
			if err := markReady(ctx, &pods[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, func() error {
		s := getService(t, ns, "lite")
		kv := s.Status.KVCache
		if kv.CapacityTokens != 4000 || kv.UsedTokens != 750 || kv.Utilization != 750.0/4000 || s.Status.ReadyReplicas != 2 {
			return fmt.Errorf("kvCache %+v, %d ready", kv, s.Status.ReadyReplicas)
		}
		// The longest context: reported where fresh (7000 from the
		// unready pod), else predicted (the silent pod's prediction).
		var predicted int64
		for _, w := range s.Status.Workers {
			if w.Pod == pods[2].Name {
				predicted = w.PredictedCapacityTokens
			}
			if w.Pod == pods[0].Name && (!w.Ready || w.CapacityTokens != 1000 || w.UsedTokens != 250 || w.PredictedCapacityTokens == 0) {
				return fmt.Errorf("worker entry %+v", w)
			}
		}
		if predicted == 0 || s.Status.MaxContextLength != max(predicted, 7000) {
			return fmt.Errorf("maxContextLength %d, predicted %d", s.Status.MaxContextLength, predicted)
		}
		if c := condition(s, v1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionFalse {
			return fmt.Errorf("Ready %+v with 2 of 5 counted", c)
		}
		return nil
	})
	// No worker reports again: capacity is no longer promised once the
	// reports are older than the bound.
	waitCounted(t, ns, "lite", 0, 0)
	// Report times travel as RFC 3339 seconds.
	if reported := now.Truncate(time.Second); time.Since(reported) < reportStaleAfter {
		t.Fatalf("capacity dropped %s after the reports, before the %s bound", time.Since(reported), reportStaleAfter)
	}
}

// The nodes' clocks need not agree with the operator's: a worker on a node
// running 2 minutes behind counts once it heartbeats, and one on a node
// running 2 minutes ahead stops counting a staleness bound after its last
// heartbeat by the operator's clock, not 2 minutes later.
func TestControllerJudgesReportsByItsOwnClock(t *testing.T) {
	ns, pods := startReportingService(t, "skew", 2)
	ctx := context.Background()
	for i := range pods {
		if err := markReady(ctx, &pods[i]); err != nil {
			t.Fatal(err)
		}
	}
	behind, ahead := &pods[0], &pods[1]
	var mu sync.Mutex
	aheadOn, aheadLast := true, time.Time{}
	stop, done := make(chan struct{}), make(chan struct{})
	defer func() { close(stop); <-done }()
	go func() { // both workers heartbeat every second, each by its node's clock
		defer close(done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			if err := setReport(ctx, behind, v1alpha1.Report{CapacityTokens: 1000, MaxContextLength: 1000, Ready: true,
				Time: metav1.NewTime(time.Now().Add(-2 * time.Minute))}); err != nil {
				t.Error(err)
			}
			mu.Lock()
			if aheadOn {
				if err := setReport(ctx, ahead, v1alpha1.Report{CapacityTokens: 2000, MaxContextLength: 2000, Ready: true,
					Time: metav1.NewTime(time.Now().Add(2 * time.Minute))}); err != nil {
					t.Error(err)
				}
				aheadLast = time.Now()
			}
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	waitCounted(t, ns, "skew", 2, 3000)
	// The worker ahead dies; the one behind keeps heartbeating.
	mu.Lock()
	aheadOn = false
	last := aheadLast
	mu.Unlock()
	waitCounted(t, ns, "skew", 1, 1000)
	// eventually gives up after 60 s, well before the worker's own clock
	// would call its last report stale (2 min + 8 s).
	if since := time.Since(last); since < reportStaleAfter-time.Second {
		t.Fatalf("the silent worker stopped counting %s after its last report, before the %s bound", since, reportStaleAfter)
	}
}

// KV utilization above the target adds workers up to the maximum; once the
// load is gone the service drains back to the minimum.
func TestControllerAutoscalesOnKVUtilization(t *testing.T) {
	ns := testEnv.Namespace(t)
	createNodes(t, ns, builders.GPUNode("a", builders.H100, 2), builders.GPUNode("b", builders.H100, 2))
	k := startKubelet(t, ns, 0)
	k.setLoad(0.9)
	startOperator(t, ns, controllers.Options{})
	createService(t, builders.MLAService(ns, "auto").Replicas(1).Autoscaling(1, 3, 0.5).
		Windows(metav1.Duration{Duration: time.Second}, metav1.Duration{Duration: 4 * time.Second}, metav1.Duration{Duration: time.Second}), ns)
	eventually(t, func() error {
		s := getService(t, ns, "auto")
		if s.Spec.Replicas == nil || *s.Spec.Replicas != 3 || s.Status.ReadyReplicas != 3 {
			return fmt.Errorf("replicas %v, %d ready", s.Spec.Replicas, s.Status.ReadyReplicas)
		}
		return nil
	})
	k.setLoad(0)
	eventually(t, func() error {
		s := getService(t, ns, "auto")
		if *s.Spec.Replicas != 1 || s.Status.Replicas != 1 || len(workerPods(t, ns)) != 1 {
			return fmt.Errorf("replicas %d, status %d, %d pods", *s.Spec.Replicas, s.Status.Replicas, len(workerPods(t, ns)))
		}
		if c := condition(s, v1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("Ready %+v", c)
		}
		return nil
	})
}

// A worker the operator saw start without a report counts from its first
// report, even when that report's time, by a node clock 5 minutes behind,
// is far past the staleness bound; without heartbeats it stops counting a
// bound later by the operator's clock.
func TestControllerCountsAFirstReportFromANodeBehind(t *testing.T) {
	ns, pods := startReportingService(t, "behind", 1)
	pod := &pods[0]
	ctx := context.Background()
	if err := markReady(ctx, pod); err != nil {
		t.Fatal(err)
	}
	// Let the operator see the Ready pod without a report first.
	eventually(t, func() error {
		if s := getService(t, ns, "behind"); s.Status.Replicas != 1 {
			return fmt.Errorf("%d replicas in status", s.Status.Replicas)
		}
		return nil
	})
	if err := setReport(ctx, pod, v1alpha1.Report{CapacityTokens: 1000, MaxContextLength: 1000, Ready: true,
		Time: metav1.NewTime(time.Now().Add(-5 * time.Minute))}); err != nil {
		t.Fatal(err)
	}
	reported := time.Now()
	waitCounted(t, ns, "behind", 1, 1000)
	waitCounted(t, ns, "behind", 0, 0)
	if since := time.Since(reported); since < reportStaleAfter-time.Second {
		t.Fatalf("the worker stopped counting %s after its only report, before the %s bound", since, reportStaleAfter)
	}
}
