package statusmanager

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/capacity"
	"github.com/mla-operator/mla-operator/internal/placement"
	"github.com/mla-operator/mla-operator/internal/workerreport"
	"github.com/mla-operator/mla-operator/test/builders"
)

var now = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

const stale = 90 * time.Second

func worker(name string, ready bool, predicted int64, r *v1alpha1.Report) corev1.Pod {
	b := builders.Pod("ns", name).WorkerOf("svc").Label(v1alpha1.LabelRevision, "rev").OnNode("n").Running(ready).
		Annotation(v1alpha1.AnnotationPredictedTokens, strconv.FormatInt(predicted, 10)).
		Annotation(v1alpha1.AnnotationGPUProduct, "H100")
	if r != nil {
		b.Report(*r)
	}
	return *b.Obj()
}

func report(capacity, used int64, age time.Duration) *v1alpha1.Report {
	return &v1alpha1.Report{CapacityTokens: capacity, UsedTokens: used, ActiveSequences: 1, MaxContextLength: capacity,
		Ready: true, Time: metav1.NewTime(now.Add(-age))}
}

func TestAggregateCountsOnlyReadyFreshWorkers(t *testing.T) {
	draining := report(5000, 10, 0)
	draining.Draining = true
	failing := report(6000, 0, 0)
	failing.Error, failing.Ready = "one sequence of 200000 tokens does not fit", false
	old := worker("old", true, 100, report(100, 50, 0))
	old.Labels[v1alpha1.LabelRevision] = "before"
	deleting := worker("deleting", true, 100, report(100, 0, 0))
	ts := metav1.NewTime(now)
	deleting.DeletionTimestamp = &ts
	done := worker("done", false, 100, nil)
	done.Status.Phase = corev1.PodSucceeded
	pods := []corev1.Pod{
		worker("a", true, 1200, report(1000, 250, 10*time.Second)),
		worker("b", true, 3500, report(3000, 500, 0)),
		worker("stale", true, 9000, report(9000, 1, 2*time.Minute)),
		worker("unready", false, 7000, report(7000, 0, 0)),
		worker("draining", true, 5000, draining),
		worker("failing", true, 6000, failing),
		worker("silent", true, 8000, nil),
		old, deleting, done,
	}
	a := AggregateWorkers(pods, "rev", 4096, workerreport.SinceReportTime(now), stale)
	wantCap, wantUsed := int64(1000+3000+100), int64(250+500+50)
	if a.KVCache.CapacityTokens != wantCap || a.KVCache.UsedTokens != wantUsed || a.ReadyReplicas != 3 {
		t.Fatalf("kv %+v ready %d, want %d/%d and 3 ready", a.KVCache, a.ReadyReplicas, wantCap, wantUsed)
	}
	if a.KVCache.Utilization != float64(wantUsed)/float64(wantCap) {
		t.Errorf("utilization %g", a.KVCache.Utilization)
	}
	if a.Replicas != 8 || a.UpdatedReplicas != 7 || len(a.Workers) != 9 { // done is skipped, deleting is not live, old is not updated
		t.Errorf("replicas %d updated %d workers %d", a.Replicas, a.UpdatedReplicas, len(a.Workers))
	}
	// Silent workers count by prediction, stale ones too; fresh ones by report.
	if a.MaxContextLength != 9000 {
		t.Errorf("max context %d, want the stale worker's prediction 9000", a.MaxContextLength)
	}
	if len(a.Errors) != 1 || !strings.Contains(a.Errors[0], "failing") {
		t.Errorf("errors %v", a.Errors)
	}
	if a.NextStale != stale-10*time.Second {
		t.Errorf("next stale in %s, want %s", a.NextStale, stale-10*time.Second)
	}
	if a.Load.Workers != 3 || a.Load.CapacityTokens != wantCap || a.Load.ContextLength != 4096 {
		t.Errorf("load %+v", a.Load)
	}
	for _, w := range a.Workers {
		if w.Pod == "deleting" && !w.Draining {
			t.Error("a worker being deleted is not shown draining")
		}
		if w.Pod == "a" && (w.CapacityTokens != 1000 || w.PredictedCapacityTokens != 1200 || !w.Ready || w.LastReportTime == nil) {
			t.Errorf("worker a %+v", w)
		}
		if w.Pod == "stale" && (w.Ready || w.CapacityTokens != 0) {
			t.Errorf("stale worker counted: %+v", w)
		}
	}
}

// The ages decide, not the workers' clocks: a node whose clock runs behind
// still counts, and one ahead does not keep a silent worker counted.
func TestAggregateJudgesByTheAgesGiven(t *testing.T) {
	behind := worker("behind", true, 100, report(1000, 10, 5*time.Minute))
	ahead := worker("ahead", true, 100, report(2000, 20, -5*time.Minute))
	behind.UID, ahead.UID = "behind", "ahead"
	byOperator := map[string]time.Duration{"behind": 20 * time.Second, "ahead": stale + time.Second}
	ages := func(pod *corev1.Pod, _ *v1alpha1.Report) time.Duration { return byOperator[string(pod.UID)] }
	a := AggregateWorkers([]corev1.Pod{behind, ahead}, "rev", 4096, ages, stale)
	if a.ReadyReplicas != 1 || a.KVCache.CapacityTokens != 1000 || a.NextStale != stale-20*time.Second {
		t.Fatalf("ready %d, kv %+v, next stale %s: want the node behind counted, for %s more", a.ReadyReplicas, a.KVCache, a.NextStale, stale-20*time.Second)
	}
	if a.MaxContextLength != 1000 {
		t.Errorf("max context %d: the stale report's 2000 counted", a.MaxContextLength)
	}
}

func TestAggregateWithNoReports(t *testing.T) {
	a := AggregateWorkers([]corev1.Pod{worker("a", true, 500, nil)}, "rev", 4096, workerreport.SinceReportTime(now), stale)
	if a.KVCache != (v1alpha1.KVCacheStatus{}) || a.ReadyReplicas != 0 || a.NextStale != 0 || a.MaxContextLength != 500 {
		t.Fatalf("%+v", a)
	}
}

func TestConditions(t *testing.T) {
	fits := Feasibility{Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonFits}
	for _, tc := range []struct {
		name                                  string
		obs                                   Observation
		ready, progressing, degraded          metav1.ConditionStatus
		readyWhy, progressingWhy, degradedWhy string
	}{
		{"all ready", Observation{Desired: 2, Aggregate: Aggregate{Replicas: 2, ReadyReplicas: 2, UpdatedReplicas: 2}, Feasibility: fits},
			"True", "False", "False", v1alpha1.ReasonAllWorkersReady, v1alpha1.ReasonStable, v1alpha1.ReasonAsExpected},
		{"creating", Observation{Desired: 2, Aggregate: Aggregate{Replicas: 2, ReadyReplicas: 1}, Feasibility: fits},
			"False", "True", "False", v1alpha1.ReasonWorkersNotReady, v1alpha1.ReasonCreatingWorkers, v1alpha1.ReasonAsExpected},
		{"rolling", Observation{Desired: 2, Rolling: true, Aggregate: Aggregate{Replicas: 2, ReadyReplicas: 2}, Feasibility: fits},
			"True", "True", "False", v1alpha1.ReasonAllWorkersReady, v1alpha1.ReasonRollingUpdate, v1alpha1.ReasonAsExpected},
		{"scaling down", Observation{Desired: 1, ScalingDown: true, Aggregate: Aggregate{Replicas: 2, ReadyReplicas: 2}, Feasibility: fits},
			"True", "True", "False", v1alpha1.ReasonAllWorkersReady, v1alpha1.ReasonScalingDown, v1alpha1.ReasonAsExpected},
		{"unplaced", Observation{Desired: 3, Unplaced: 1, Rejections: "n: 0 of 8 free", Aggregate: Aggregate{Replicas: 2}, Feasibility: fits},
			"False", "True", "True", v1alpha1.ReasonWorkersNotReady, v1alpha1.ReasonCreatingWorkers, v1alpha1.ReasonInsufficientGPUs},
		{"failed worker", Observation{Desired: 1, Failed: []string{"w"}, Aggregate: Aggregate{Replicas: 1, ReadyReplicas: 1}, Feasibility: fits},
			"True", "False", "True", v1alpha1.ReasonAllWorkersReady, v1alpha1.ReasonStable, v1alpha1.ReasonWorkerFailed},
		{"blocked", Observation{Desired: 1, Feasibility: Feasibility{Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonContextTooLong, Message: "too long", Blocked: true}},
			"False", "False", "True", v1alpha1.ReasonWorkersNotReady, v1alpha1.ReasonContextTooLong, v1alpha1.ReasonContextTooLong},
		{"scaled to zero", Observation{Desired: 0, Feasibility: fits},
			"True", "False", "False", v1alpha1.ReasonAllWorkersReady, v1alpha1.ReasonStable, v1alpha1.ReasonAsExpected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.obs.Generation = 7
			conds := Conditions(nil, tc.obs)
			for _, want := range []struct {
				typ    string
				status metav1.ConditionStatus
				reason string
			}{{v1alpha1.ConditionReady, tc.ready, tc.readyWhy}, {v1alpha1.ConditionProgressing, tc.progressing, tc.progressingWhy},
				{v1alpha1.ConditionDegraded, tc.degraded, tc.degradedWhy}, {v1alpha1.ConditionContextLimitFeasible, tc.obs.Feasibility.Status, tc.obs.Feasibility.Reason}} {
				c := meta.FindStatusCondition(conds, want.typ)
				if c == nil || c.Status != want.status || c.Reason != want.reason || c.ObservedGeneration != 7 {
					t.Errorf("%s = %+v, want %s/%s", want.typ, c, want.status, want.reason)
				}
			}
		})
	}
}

func TestConditionsKeepTransitionTimes(t *testing.T) {
	obs := Observation{Desired: 1, Aggregate: Aggregate{Replicas: 1, ReadyReplicas: 1}, Feasibility: Feasibility{Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonFits}}
	first := Conditions(nil, obs)
	past := metav1.NewTime(now.Add(-time.Hour))
	for i := range first {
		first[i].LastTransitionTime = past
	}
	again := Conditions(first, obs)
	for _, c := range again {
		if !c.LastTransitionTime.Equal(&past) {
			t.Errorf("%s moved its transition time without a change", c.Type)
		}
	}
}

func TestJudgeFeasibility(t *testing.T) {
	svc := builders.MLAService("ns", "s").Context(163840).Obj()
	cfg, err := capacity.FromSpec(&svc.Spec)
	if err != nil {
		t.Fatal(err)
	}
	place := func(nodes ...*corev1.Node) placement.Result {
		var ns []corev1.Node
		for _, n := range nodes {
			ns = append(ns, *n)
		}
		return placement.Place(placement.Request{Service: svc, Config: cfg, Nodes: ns})
	}
	a100 := builders.GPUNode("a100", builders.A100_40G, 8).Obj()
	h100 := builders.GPUNode("h100", builders.H100, 8).Obj()

	f := JudgeFeasibility(&svc.Spec, nil, place(a100))
	if f.Status != metav1.ConditionFalse || f.Reason != v1alpha1.ReasonContextTooLong || !f.Blocked ||
		!strings.Contains(f.Message, "163840 tokens needs") || !strings.Contains(f.Message, "the longest context that fits is") {
		t.Errorf("A100 only: %+v", f)
	}
	if f := JudgeFeasibility(&svc.Spec, nil, place(a100, h100)); f.Status != metav1.ConditionTrue || f.Blocked || !strings.Contains(f.Message, builders.H100.Product) {
		t.Errorf("with an H100: %+v", f)
	}
	if f := JudgeFeasibility(&svc.Spec, nil, place(builders.Node("cpu").Obj())); f.Status != metav1.ConditionUnknown || f.Reason != v1alpha1.ReasonNoGPUNodes ||
		!strings.Contains(f.Message, "cpu: not a GPU node") {
		t.Errorf("no GPU nodes: %+v", f)
	}
	fp8 := builders.MLAService("ns", "s").DType(v1alpha1.KVCacheFP8).Obj()
	if f := JudgeFeasibility(&fp8.Spec, nil, place(h100)); f.Reason != v1alpha1.ReasonUnsupportedKVDType || !f.Blocked {
		t.Errorf("fp8: %+v", f)
	}
	if f := JudgeFeasibility(&svc.Spec, errors.New("bad"), placement.Result{}); f.Reason != ReasonInvalidSpec || !f.Blocked {
		t.Errorf("invalid: %+v", f)
	}
}

func TestSummarizeRejections(t *testing.T) {
	var rs []placement.Rejection
	for i := range 20 {
		rs = append(rs, placement.Rejection{Node: "n" + strconv.Itoa(i), Reason: "not Ready"})
	}
	s := SummarizeRejections(rs)
	if !strings.Contains(s, "n0: not Ready") || !strings.Contains(s, "and 12 more nodes") || strings.Contains(s, "n8:") {
		t.Errorf("summary %q", s)
	}
}
