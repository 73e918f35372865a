package workerplan

import (
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/workerpod"
	"github.com/mla-operator/mla-operator/internal/workerreport"
	"github.com/mla-operator/mla-operator/test/builders"
)

var now = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

const rev, oldRev = "new", "old"

// pod is a worker of revision r on node, Ready or not, holding used tokens.
func pod(name, r, node string, ready bool, used int64) corev1.Pod {
	return *builders.Pod("ns", name).WorkerOf("svc").Label(v1alpha1.LabelRevision, r).OnNode(node).Running(ready).
		Report(v1alpha1.Report{CapacityTokens: 1000, UsedTokens: used, Ready: true, Time: metav1.NewTime(now)}).Obj()
}

func nodes(names ...string) map[string]*corev1.Node {
	out := map[string]*corev1.Node{}
	for _, n := range names {
		out[n] = builders.GPUNode(n, builders.H100, 8).Obj()
	}
	return out
}

type deletion struct {
	pod, reason string
	force       bool
	drain       bool
}

func TestDecide(t *testing.T) {
	failed := pod("svc-new-2", rev, "a", false, 0)
	failed.Status.Phase, failed.Status.Reason = corev1.PodFailed, "Evicted"
	gone := metav1.NewTime(now)
	terminating := pod("svc-new-0", rev, "a", true, 0)
	terminating.DeletionTimestamp = &gone
	unschedulable := func(name string, since time.Duration) corev1.Pod {
		p := *builders.Pod("ns", name).WorkerOf("svc").Label(v1alpha1.LabelRevision, rev).Obj()
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{"a"}}}}}}}}
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
			Message: "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.", LastTransitionTime: metav1.NewTime(now.Add(-since))}}
		return p
	}
	notReadyNode := func(since time.Duration) map[string]*corev1.Node {
		ns := nodes("a")
		ns["b"] = builders.GPUNode("b", builders.H100, 8).NotReady().Obj()
		ns["b"].Status.Conditions[0].LastTransitionTime = metav1.NewTime(now.Add(-since))
		return ns
	}
	for _, tc := range []struct {
		name      string
		svc       *builders.MLAServiceBuilder
		pods      []corev1.Pod
		nodes     map[string]*corev1.Node
		desired   int32
		frozen    bool
		deletions []deletion
		create    []string
		recheck   time.Duration
		rolling   bool
	}{{
		name: "scale up from nothing", desired: 3, nodes: nodes("a"),
		create: []string{"svc-new-0", "svc-new-1", "svc-new-2"},
	}, {
		name:  "terminating pods keep their names",
		pods:  []corev1.Pod{terminating, pod("svc-new-1", rev, "a", true, 0)},
		nodes: nodes("a"), desired: 2,
		create: []string{"svc-new-2"},
	}, {
		name:  "failed pods are removed and replaced",
		pods:  []corev1.Pod{pod("svc-new-0", rev, "a", true, 0), pod("svc-new-1", rev, "a", true, 0), failed},
		nodes: nodes("a"), desired: 3,
		deletions: []deletion{{pod: "svc-new-2", reason: ReasonFailed}},
		create:    []string{"svc-new-3"},
	}, {
		name:  "workers of a gone node are force-deleted and replaced",
		pods:  []corev1.Pod{pod("svc-new-0", rev, "a", true, 0), pod("svc-new-1", rev, "gone", true, 0)},
		nodes: nodes("a"), desired: 2,
		deletions: []deletion{{pod: "svc-new-1", reason: ReasonNodeGone, force: true}},
		create:    []string{"svc-new-2"},
	}, {
		name:  "a NotReady node within the grace keeps its workers",
		pods:  []corev1.Pod{pod("svc-new-0", rev, "a", true, 0), pod("svc-new-1", rev, "b", false, 0)},
		nodes: notReadyNode(30 * time.Second), desired: 2,
		recheck: 90 * time.Second,
	}, {
		name:  "a NotReady node beyond the grace loses its workers",
		pods:  []corev1.Pod{pod("svc-new-0", rev, "a", true, 0), pod("svc-new-1", rev, "b", false, 0)},
		nodes: notReadyNode(3 * time.Minute), desired: 2,
		deletions: []deletion{{pod: "svc-new-1", reason: ReasonNodeNotReady}},
		create:    []string{"svc-new-2"},
	}, {
		name:  "a worker the scheduler refuses waits out the grace",
		pods:  []corev1.Pod{unschedulable("svc-new-0", 10*time.Second)},
		nodes: nodes("a"), desired: 1,
		recheck: 50 * time.Second,
	}, {
		name:  "a worker the scheduler refuses beyond the grace is placed again",
		pods:  []corev1.Pod{unschedulable("svc-new-0", 2*time.Minute)},
		nodes: nodes("a"), desired: 1,
		deletions: []deletion{{pod: "svc-new-0", reason: ReasonUnschedulable}},
		create:    []string{"svc-new-1"},
	}, {
		name: "scale down drains the least-loaded worker",
		pods: []corev1.Pod{pod("svc-new-0", rev, "a", true, 500), pod("svc-new-1", rev, "a", true, 100),
			pod("svc-new-2", rev, "a", true, 300)},
		nodes: nodes("a"), desired: 2,
		deletions: []deletion{{pod: "svc-new-1", reason: ReasonScaleDown, drain: true}},
	}, {
		name: "scale down takes unready workers first",
		pods: []corev1.Pod{pod("svc-new-0", rev, "a", true, 0), pod("svc-new-1", rev, "a", false, 0),
			pod("svc-new-2", rev, "a", true, 0)},
		nodes: nodes("a"), desired: 1,
		deletions: []deletion{{pod: "svc-new-1", reason: ReasonScaleDown, drain: true}, {pod: "svc-new-0", reason: ReasonScaleDown, drain: true}},
	}, {
		name: "rollout starts with one old worker, replaced in the same pass",
		pods: []corev1.Pod{pod("svc-old-0", oldRev, "a", true, 300), pod("svc-old-1", oldRev, "a", true, 100),
			pod("svc-old-2", oldRev, "a", true, 200)},
		nodes: nodes("a"), desired: 3, rolling: true,
		deletions: []deletion{{pod: "svc-old-1", reason: ReasonRollout}},
		create:    []string{"svc-new-0"},
	}, {
		name: "rollout waits while a new worker is not Ready",
		pods: []corev1.Pod{pod("svc-old-0", oldRev, "a", true, 0), pod("svc-old-2", oldRev, "a", true, 0),
			pod("svc-new-0", rev, "a", false, 0)},
		nodes: nodes("a"), desired: 3, rolling: true,
	}, {
		name:  "rollout with surge adds before it removes",
		svc:   builders.MLAService("ns", "svc").Rollout(0, 1),
		pods:  []corev1.Pod{pod("svc-old-0", oldRev, "a", true, 0), pod("svc-old-1", oldRev, "a", true, 0)},
		nodes: nodes("a"), desired: 2, rolling: true,
		create: []string{"svc-new-0"},
	}, {
		name: "rollout with surge removes an old worker once the new one is Ready",
		svc:  builders.MLAService("ns", "svc").Rollout(0, 1),
		pods: []corev1.Pod{pod("svc-old-0", oldRev, "a", true, 0), pod("svc-old-1", oldRev, "a", true, 0),
			pod("svc-new-0", rev, "a", true, 0)},
		nodes: nodes("a"), desired: 2, rolling: true,
		deletions: []deletion{{pod: "svc-old-0", reason: ReasonRollout, drain: true}},
		create:    []string{"svc-new-1"},
	}, {
		name:  "unready old workers go at once",
		svc:   builders.MLAService("ns", "svc").Rollout(1, 0),
		pods:  []corev1.Pod{pod("svc-old-0", oldRev, "a", false, 0), pod("svc-old-1", oldRev, "a", false, 0)},
		nodes: nodes("a"), desired: 2, rolling: true,
		deletions: []deletion{{pod: "svc-old-0", reason: ReasonRollout}, {pod: "svc-old-1", reason: ReasonRollout}},
		create:    []string{"svc-new-0", "svc-new-1"},
	}, {
		name:  "frozen: neither create nor roll, but remove failed workers",
		pods:  []corev1.Pod{pod("svc-old-0", oldRev, "a", true, 0), failed},
		nodes: nodes("a"), desired: 3, frozen: true, rolling: true,
		deletions: []deletion{{pod: "svc-new-2", reason: ReasonFailed}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.svc
			if b == nil {
				b = builders.MLAService("ns", "svc")
			}
			p := Decide(Input{Service: b.Obj(), Revision: rev, Pods: tc.pods, Nodes: tc.nodes, Desired: tc.desired,
				Frozen: tc.frozen, Now: now, NodeLostGrace: 2 * time.Minute, UnschedulableGrace: time.Minute, StaleAfter: time.Minute})
			var got []deletion
			for _, d := range p.Deletions {
				got = append(got, deletion{d.Pod.Name, d.Reason, d.Force, d.Drain})
			}
			if !slices.Equal(got, tc.deletions) {
				t.Errorf("deletions %v, want %v", got, tc.deletions)
			}
			if !slices.Equal(p.Create, tc.create) {
				t.Errorf("create %v, want %v", p.Create, tc.create)
			}
			if p.RecheckAfter != tc.recheck || p.Rolling != tc.rolling {
				t.Errorf("recheck %s rolling %v, want %s %v", p.RecheckAfter, p.Rolling, tc.recheck, tc.rolling)
			}
			for _, name := range p.Create {
				if name != workerpod.Name("svc", rev, ordinalOf(t, name)) {
					t.Errorf("name %s is not a worker name of revision %s", name, rev)
				}
			}
		})
	}
}

func ordinalOf(t *testing.T, name string) int {
	for i := 0; i < 100; i++ {
		if workerpod.Name("svc", rev, i) == name {
			return i
		}
	}
	t.Fatalf("no ordinal in %s", name)
	return -1
}

// Scale-down judges reports by the ages it is given: a busy worker whose
// report the operator has not seen renewed goes before an idle one, whatever
// the report's time says.
func TestScaleDownDrainsStaleByTheOperatorsClock(t *testing.T) {
	busy, idle := pod("svc-new-0", rev, "a", true, 900), pod("svc-new-1", rev, "a", true, 10)
	ages := func(p *corev1.Pod, _ *v1alpha1.Report) time.Duration {
		if p.Name == busy.Name {
			return 2 * time.Minute
		}
		return 0
	}
	for _, tc := range []struct {
		name  string
		ages  workerreport.Ages
		drain string
	}{
		{"workers' clocks", nil, idle.Name},
		{"operator's clock", ages, busy.Name},
	} {
		p := Decide(Input{Service: builders.MLAService("ns", "svc").Obj(), Revision: rev, Pods: []corev1.Pod{busy, idle},
			Nodes: nodes("a"), Desired: 1, Now: now, StaleAfter: time.Minute, ReportAges: tc.ages})
		if len(p.Deletions) != 1 || p.Deletions[0].Pod.Name != tc.drain {
			t.Errorf("%s: deletions %+v, want %s drained", tc.name, p.Deletions, tc.drain)
		}
	}
}
