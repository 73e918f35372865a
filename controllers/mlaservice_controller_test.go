package controllers

import (
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/reportclock"
	"github.com/mla-operator/mla-operator/internal/statusmanager"
	"github.com/mla-operator/mla-operator/internal/workerplan"
	"github.com/mla-operator/mla-operator/internal/workerreport"
	"github.com/mla-operator/mla-operator/test/builders"
)

func TestNodeChangedIgnoresHeartbeats(t *testing.T) {
	base := builders.GPUNode("n", builders.H100, 8).Obj()
	heartbeat := base.DeepCopy()
	heartbeat.Status.Conditions[0].LastHeartbeatTime = metav1.Now()
	heartbeat.ResourceVersion = "2"
	p := nodeChanged()
	if p.Update(event.UpdateEvent{ObjectOld: base, ObjectNew: heartbeat}) {
		t.Error("a heartbeat enqueues every service")
	}
	for name, changed := range map[string]*corev1.Node{
		"not ready":   builders.GPUNode("n", builders.H100, 8).NotReady().Obj(),
		"cordoned":    builders.GPUNode("n", builders.H100, 8).Unschedulable().Obj(),
		"tainted":     builders.GPUNode("n", builders.H100, 8).Taint("k", "v", corev1.TaintEffectNoSchedule).Obj(),
		"relabelled":  builders.GPUNode("n", builders.H100, 8).Label("pool", "x").Obj(),
		"fewer GPUs":  builders.GPUNode("n", builders.H100, 8).Allocatable(7).Obj(),
		"another GPU": builders.GPUNode("n", builders.H200, 8).Obj(),
	} {
		if !p.Update(event.UpdateEvent{ObjectOld: base, ObjectNew: changed}) {
			t.Errorf("%s: not enqueued", name)
		}
	}
}

func TestWorkerChangedIgnoresReportHeartbeats(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	report := v1alpha1.Report{CapacityTokens: 1 << 20, UsedTokens: 4096, ActiveSequences: 1, Ready: true, Time: metav1.NewTime(t0)}
	worker := func(r v1alpha1.Report) *builders.PodBuilder {
		return builders.Pod("ns", "w-0").WorkerOf("svc").OnNode("n").Running(true).Report(r)
	}
	base := worker(report).Obj()
	later := report
	later.Time = metav1.NewTime(t0.Add(30 * time.Second))
	heartbeat := worker(later).Obj()
	heartbeat.ResourceVersion = "2"
	r := &MLAServiceReconciler{Clock: clocktesting.NewFakePassiveClock(t0), Options: Options{}.withDefaults()}
	p := r.workerChanged()
	if p.Update(event.UpdateEvent{ObjectOld: base, ObjectNew: heartbeat}) {
		t.Error("a report heartbeat enqueues its service")
	}
	used := later
	used.UsedTokens = 1 << 19
	draining := later
	draining.Draining = true
	for name, changed := range map[string]*corev1.Pod{
		"usage moved":    worker(used).Obj(),
		"draining":       worker(draining).Obj(),
		"not ready":      builders.Pod("ns", "w-0").WorkerOf("svc").OnNode("n").Running(false).Report(later).Obj(),
		"failed":         worker(later).Phase(corev1.PodFailed).Obj(),
		"report removed": builders.Pod("ns", "w-0").WorkerOf("svc").OnNode("n").Running(true).Obj(),
		"relabelled":     worker(later).Label("x", "y").Obj(),
	} {
		if !p.Update(event.UpdateEvent{ObjectOld: base, ObjectNew: changed}) {
			t.Errorf("%s: not enqueued", name)
		}
	}
	first := builders.Pod("ns", "w-0").WorkerOf("svc").OnNode("n").Running(true).Obj()
	if !p.Update(event.UpdateEvent{ObjectOld: first, ObjectNew: base}) {
		t.Error("a first report is not enqueued")
	}
}

// The watch is where the operator sees heartbeats: it notes each report's
// new time by the operator's clock, passes a heartbeat that renews a report
// the operator no longer counted (or never saw), and forgets deleted pods.
func TestWorkerChangedNotesHeartbeats(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakePassiveClock(t0)
	r := &MLAServiceReconciler{Clock: clk, Status: &statusmanager.Writer{}, Options: Options{}.withDefaults()}
	p := r.workerChanged()
	// The worker's node runs 5 minutes behind the operator.
	skew := -5 * time.Minute
	worker := func(uid string, made time.Duration) *corev1.Pod {
		pod := builders.Pod("ns", "w-"+uid).WorkerOf("svc").ControlledBy("svc", "s").OnNode("n").Running(true).
			Report(v1alpha1.Report{CapacityTokens: 1000, Ready: true, Time: metav1.NewTime(t0.Add(skew + made))}).Obj()
		pod.UID = types.UID(uid)
		return pod
	}
	key := reportclock.Key{Service: types.NamespacedName{Namespace: "ns", Name: "svc"}, Pod: "a"}
	age := func(at time.Duration) time.Duration {
		a, ok := r.reports.Last(key, t0.Add(at))
		if !ok {
			t.Fatalf("pod a forgotten at %s", at)
		}
		return a
	}
	// A reconcile sees the first report: by the worker's clock it is 5
	// minutes old, so it does not count.
	if a := r.reportAges(key.Service, t0)(worker("a", 0), mustParse(t, worker("a", 0))); a != 5*time.Minute {
		t.Fatalf("first sight: %s", a)
	}
	clk.SetTime(t0.Add(30 * time.Second))
	if !p.Update(event.UpdateEvent{ObjectOld: worker("a", 0), ObjectNew: worker("a", 30*time.Second)}) {
		t.Error("a heartbeat renewing a stale report does not wake its service")
	}
	if a := age(30 * time.Second); a != 0 {
		t.Errorf("renewed: %s old", a)
	}
	clk.SetTime(t0.Add(60 * time.Second))
	if p.Update(event.UpdateEvent{ObjectOld: worker("a", 30*time.Second), ObjectNew: worker("a", 60*time.Second)}) {
		t.Error("a heartbeat of a fresh report wakes its service")
	}
	if a := age(100 * time.Second); a != 40*time.Second {
		t.Errorf("40 s after the heartbeat: %s old", a)
	}
	// A pod the operator has not looked at yet: pass, so a reconcile does.
	if !p.Update(event.UpdateEvent{ObjectOld: worker("b", 0), ObjectNew: worker("b", 30*time.Second)}) {
		t.Error("a heartbeat of a pod never seen does not wake its service")
	}
	// A pod of no MLAService is not noted.
	stranger := worker("c", 30*time.Second)
	stranger.OwnerReferences = nil
	p.Update(event.UpdateEvent{ObjectOld: worker("c", 0), ObjectNew: stranger})
	if n := r.reports.Len(); n != 2 {
		t.Errorf("%d pods noted, want a and b", n)
	}
	if !p.Delete(event.DeleteEvent{Object: worker("a", 60*time.Second)}) {
		t.Error("a deleted worker does not wake its service")
	}
	if _, ok := r.reports.Last(key, t0); ok || r.reports.Len() != 1 {
		t.Error("a deleted pod is remembered")
	}
	r.forget(key.Service)
	if r.reports.Len() != 0 {
		t.Error("a deleted service's pods are remembered")
	}
}

func mustParse(t *testing.T, pod *corev1.Pod) *v1alpha1.Report {
	t.Helper()
	rep, err := workerreport.Parse(pod)
	if err != nil || rep == nil {
		t.Fatalf("report of %s: %v %v", pod.Name, rep, err)
	}
	return rep
}

func TestRequeueAfterTakesTheSoonestReason(t *testing.T) {
	r := &MLAServiceReconciler{Options: Options{}.withDefaults()}
	plain := builders.MLAService("ns", "s").Obj()
	if d := r.requeueAfter(plain, statusmanager.Aggregate{}, workerplan.Plan{}, 0, false); d != 0 {
		t.Errorf("nothing pending: requeue after %s", d)
	}
	if d := r.requeueAfter(plain, statusmanager.Aggregate{NextStale: 40 * time.Second}, workerplan.Plan{RecheckAfter: time.Minute}, 1, false); d != DefaultUnplacedRetry {
		t.Errorf("unplaced workers: requeue after %s, want %s", d, DefaultUnplacedRetry)
	}
	if d := r.requeueAfter(plain, statusmanager.Aggregate{}, workerplan.Plan{}, 0, true); d != DefaultUnplacedRetry {
		t.Errorf("blocked: requeue after %s, want %s", d, DefaultUnplacedRetry)
	}
	if d := r.requeueAfter(plain, statusmanager.Aggregate{NextStale: 4 * time.Second}, workerplan.Plan{}, 0, false); d != 4*time.Second {
		t.Errorf("a report going stale: requeue after %s", d)
	}
	auto := builders.MLAService("ns", "s").Windows(metav1.Duration{Duration: 2 * time.Second}, metav1.Duration{Duration: time.Minute}, metav1.Duration{}).Obj()
	if d := r.requeueAfter(auto, statusmanager.Aggregate{}, workerplan.Plan{}, 0, false); d != time.Second {
		t.Errorf("autoscaling with a 2s up window: requeue after %s, want 1s", d)
	}
}

func TestOwnedByNeedsTheControllerReference(t *testing.T) {
	svc := builders.MLAService("ns", "s").UID("current").Obj()
	mine := builders.Pod("ns", "mine").WorkerOf("s").ControlledBy("s", "current").Obj()
	previous := builders.Pod("ns", "previous").WorkerOf("s").ControlledBy("s", "deleted-service-of-the-same-name").Obj()
	lookalike := builders.Pod("ns", "lookalike").WorkerOf("s").Obj()
	elsewhere := builders.Pod("other", "elsewhere").WorkerOf("s").ControlledBy("s", "current").Obj()
	got := ownedBy(svc, []corev1.Pod{*mine, *previous, *lookalike, *elsewhere})
	if len(got) != 1 || got[0].Name != "mine" {
		t.Fatalf("owned pods %v", got)
	}
}

func TestServiceMetricsAreRecordedAndForgotten(t *testing.T) {
	svc := builders.MLAService("ns", "metrics").Obj()
	agg := statusmanager.Aggregate{ReadyReplicas: 2}
	agg.KVCache.CapacityTokens, agg.KVCache.UsedTokens, agg.KVCache.Utilization = 1000, 250, 0.25
	recordServiceMetrics(svc, agg, 3, true)
	l := []string{"ns", "metrics"}
	for name, tc := range map[string]struct {
		got  float64
		want float64
	}{
		"capacity":    {gauge(t, serviceCapacity.WithLabelValues(l...)), 1000},
		"used":        {gauge(t, serviceUsed.WithLabelValues(l...)), 250},
		"utilization": {gauge(t, serviceUtilization.WithLabelValues(l...)), 0.25},
		"ready":       {gauge(t, serviceReady.WithLabelValues(l...)), 2},
		"desired":     {gauge(t, serviceDesired.WithLabelValues(l...)), 3},
		"infeasible":  {gauge(t, serviceInfeasible.WithLabelValues(l...)), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %g, want %g", name, tc.got, tc.want)
		}
	}
	forgetServiceMetrics(types.NamespacedName{Namespace: "ns", Name: "metrics"})
	ch := make(chan prometheus.Metric, 100)
	serviceCapacity.Collect(ch)
	close(ch)
	n := 0
	for range ch {
		n++
	}
	if n != 0 {
		t.Errorf("%d capacity series after the service is gone", n)
	}
}

func gauge(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

func TestServicesToWake(t *testing.T) {
	owned := func(ns, name, svc, apiVersion string) corev1.Pod {
		p := builders.Pod(ns, name).WorkerOf(svc).ControlledBy(svc, "u").OnNode("n").Obj()
		p.OwnerReferences[0].APIVersion = apiVersion
		return *p
	}
	ours := v1alpha1.GroupVersion.String()
	key := func(ns, name string) types.NamespacedName { return types.NamespacedName{Namespace: ns, Name: name} }
	for _, tc := range []struct {
		name    string
		pods    []corev1.Pod
		waiting map[types.NamespacedName]bool
		want    []string
	}{
		{name: "a node without workers wakes nobody"},
		{name: "the owners of its workers, each once",
			pods: []corev1.Pod{owned("a", "x-0", "x", ours), owned("a", "x-1", "x", ours), owned("b", "x-0", "x", ours)},
			want: []string{"a/x", "b/x"}},
		{name: "services waiting for room",
			waiting: map[types.NamespacedName]bool{key("a", "w"): true, key("a", "done"): false},
			want:    []string{"a/w"}},
		{name: "both",
			pods:    []corev1.Pod{owned("a", "x-0", "x", ours)},
			waiting: map[types.NamespacedName]bool{key("a", "x"): true, key("a", "w"): true},
			want:    []string{"a/w", "a/x"}},
		{name: "a pod without a controller or owned by another kind's MLAService",
			pods: []corev1.Pod{*builders.Pod("a", "p").OnNode("n").Obj(), owned("a", "y-0", "y", "example.com/v1")}},
	} {
		var got []string
		for _, r := range servicesToWake(tc.pods, tc.waiting) {
			got = append(got, r.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
