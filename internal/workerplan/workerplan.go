// Package workerplan decides what to do with a service's worker pods to
// reach the desired count on the current revision: which pods to delete
// (failed, on lost nodes, surplus, or of an old revision within the rollout
// budget) and how many to create. It is pure; placement picks the nodes of
// the pods to create and podmanager carries the plan out.
package workerplan

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/nodeinfo"
	"github.com/mla-operator/mla-operator/internal/workerpod"
	"github.com/mla-operator/mla-operator/internal/workerreport"
)

// Reasons a worker pod is deleted; they are event reasons too.
const (
	ReasonFailed        = "WorkerFailed"
	ReasonNodeGone      = "NodeGone"
	ReasonNodeNotReady  = "NodeNotReady"
	ReasonScaleDown     = "ScaleDown"
	ReasonRollout       = "RollingUpdate"
	ReasonUnschedulable = "Unschedulable"
)

// Input is everything the plan depends on.
type Input struct {
	Service  *v1alpha1.MLAService
	Revision string
	// Pods are the service's worker pods.
	Pods []corev1.Pod
	// Nodes by name.
	Nodes   map[string]*corev1.Node
	Desired int32
	// Frozen stops creating and rolling (the spec cannot be served now);
	// failed pods are still removed and surplus still drained.
	Frozen bool
	Now    time.Time
	// NodeLostGrace is how long a node may stay NotReady before its
	// workers are placed elsewhere.
	NodeLostGrace time.Duration
	// UnschedulableGrace is how long the scheduler may refuse to bind a
	// worker to its node (something placement could not see, such as
	// another pod binding first) before it is placed again.
	UnschedulableGrace time.Duration
	// StaleAfter bounds report freshness when choosing the least-loaded
	// worker to drain.
	StaleAfter time.Duration
	// ReportAges says how old each report is (the operator's
	// reportclock); nil trusts the workers' clocks against Now.
	ReportAges workerreport.Ages
}

// Deletion is a pod to delete.
type Deletion struct {
	Pod    *corev1.Pod
	Reason string
	// Message says why, for events.
	Message string
	// Force deletes with a zero grace period: the pod's node is gone and
	// no kubelet will ever confirm a graceful deletion.
	Force bool
	// Drain marks a scale-down: the pod is annotated with the reason
	// first, and deleted with the drain grace.
	Drain bool
}

// Plan is what to do.
type Plan struct {
	Deletions []Deletion
	// Create names the pods to create, in order.
	Create []string
	// Rolling is true while pods of an old revision remain.
	Rolling bool
	// ScalingDown is true while more pods run than desired.
	ScalingDown bool
	// Failed names failed or evicted pods.
	Failed []string
	// RecheckAfter is when a NotReady node's grace ends, 0 if never.
	RecheckAfter time.Duration
}

// Decide computes the plan.
func Decide(in Input) Plan {
	var p Plan
	var current, old []*corev1.Pod
	for i := range in.Pods {
		pod := &in.Pods[i]
		if pod.DeletionTimestamp != nil {
			continue // already going; its GPUs stay counted until it is gone
		}
		if nodeinfo.Terminal(pod) {
			msg := fmt.Sprintf("worker %s %s", pod.Name, strings.ToLower(string(pod.Status.Phase)))
			if pod.Status.Reason != "" {
				msg += ": " + pod.Status.Reason
			}
			if pod.Status.Message != "" {
				msg += ": " + pod.Status.Message
			}
			p.Deletions = append(p.Deletions, Deletion{Pod: pod, Reason: ReasonFailed, Message: msg})
			p.Failed = append(p.Failed, pod.Name)
			continue
		}
		if c := unschedulable(pod); c != nil {
			if left := c.LastTransitionTime.Add(in.UnschedulableGrace).Sub(in.Now); left > 0 {
				p.RecheckAfter = minPositive(p.RecheckAfter, left)
			} else {
				p.Deletions = append(p.Deletions, Deletion{Pod: pod, Reason: ReasonUnschedulable,
					Message: fmt.Sprintf("worker %s could not be scheduled on node %s for %s (%s); placing it again",
						pod.Name, nodeinfo.PodNode(pod), in.UnschedulableGrace, c.Message)})
				continue
			}
		}
		if name := nodeinfo.PodNode(pod); name != "" {
			node, ok := in.Nodes[name]
			if !ok {
				p.Deletions = append(p.Deletions, Deletion{Pod: pod, Reason: ReasonNodeGone, Force: true,
					Message: fmt.Sprintf("node %s of worker %s is gone; placing the worker elsewhere", name, pod.Name)})
				continue
			}
			if c := nodeinfo.ReadyCondition(node); c == nil || c.Status != corev1.ConditionTrue {
				var since time.Time
				if c != nil {
					since = c.LastTransitionTime.Time
				}
				if left := since.Add(in.NodeLostGrace).Sub(in.Now); left > 0 {
					p.RecheckAfter = minPositive(p.RecheckAfter, left)
				} else {
					p.Deletions = append(p.Deletions, Deletion{Pod: pod, Reason: ReasonNodeNotReady,
						Message: fmt.Sprintf("node %s of worker %s has not been Ready for %s; placing the worker elsewhere", name, pod.Name, in.NodeLostGrace)})
					continue
				}
			}
		}
		if pod.Labels[v1alpha1.LabelRevision] == in.Revision {
			current = append(current, pod)
		} else {
			old = append(old, pod)
		}
	}

	desired := int(max(in.Desired, 0))
	maxUnavailable, maxSurge := 1, 0
	if r := in.Service.Spec.Rollout; r != nil {
		maxUnavailable, maxSurge = int(r.MaxUnavailable), int(r.MaxSurge)
	}

	// Surplus: drain old pods first, then the least loaded.
	// Old pods beyond the count go as part of the rollout (a surge ends
	// this way); current ones as a scale-down.
	if excess := len(current) + len(old) - desired; excess > 0 {
		victims := append(order(old, in), order(current, in)...)
		for i, pod := range victims[:excess] {
			reason := ReasonRollout
			if i >= len(old) {
				reason, p.ScalingDown = ReasonScaleDown, true
			}
			p.Deletions = append(p.Deletions, Deletion{Pod: pod, Reason: reason, Drain: true,
				Message: fmt.Sprintf("draining worker %s: %d workers desired", pod.Name, desired)})
		}
		gone := map[*corev1.Pod]bool{}
		for _, v := range victims[:excess] {
			gone[v] = true
		}
		old = slices.DeleteFunc(old, func(p *corev1.Pod) bool { return gone[p] })
		current = slices.DeleteFunc(current, func(p *corev1.Pod) bool { return gone[p] })
	}
	p.Rolling = len(old) > 0
	if in.Frozen {
		return p
	}

	// Rollout: take down old pods while at least desired - maxUnavailable
	// pods stay Ready; unready old pods serve nobody and go first.
	ready := 0
	for _, pod := range append(slices.Clone(current), old...) {
		if workerreport.PodReady(pod) {
			ready++
		}
	}
	budget := ready - (desired - maxUnavailable)
	live := len(current) + len(old)
	for _, pod := range order(old, in) {
		podReady := workerreport.PodReady(pod)
		if podReady && budget <= 0 {
			break
		}
		if podReady {
			budget--
		}
		live--
		p.Deletions = append(p.Deletions, Deletion{Pod: pod, Reason: ReasonRollout,
			Message: fmt.Sprintf("replacing worker %s of revision %s with revision %s", pod.Name, pod.Labels[v1alpha1.LabelRevision], in.Revision)})
	}

	// Create up to desired on the current revision, at most maxSurge above
	// desired in all.
	if n := min(desired-len(current), desired+maxSurge-live); n > 0 {
		p.Create = names(in, n)
	}
	return p
}

// order sorts pods for removal: unready first, then the least loaded.
func order(pods []*corev1.Pod, in Input) []*corev1.Pod {
	type key struct {
		counted bool
		used    int64
		active  int32
	}
	ages := in.ReportAges
	if ages == nil {
		ages = workerreport.SinceReportTime(in.Now)
	}
	keys := map[*corev1.Pod]key{}
	for _, pod := range pods {
		r, _ := workerreport.Parse(pod)
		k := key{counted: workerreport.Counted(pod, r, ages, in.StaleAfter)}
		if k.counted {
			k.used, k.active = r.UsedTokens, r.ActiveSequences
		}
		keys[pod] = k
	}
	out := slices.Clone(pods)
	slices.SortFunc(out, func(a, b *corev1.Pod) int {
		x, y := keys[a], keys[b]
		return cmp.Or(cmp.Compare(rank(workerreport.PodReady(a)), rank(workerreport.PodReady(b))),
			cmp.Compare(rank(x.counted), rank(y.counted)),
			cmp.Compare(x.used, y.used), cmp.Compare(x.active, y.active), strings.Compare(a.Name, b.Name))
	})
	return out
}

// names picks the n lowest ordinals of the current revision that no pod of
// the service (terminating ones included) uses.
func names(in Input, n int) []string {
	used := map[string]bool{}
	for i := range in.Pods {
		used[in.Pods[i].Name] = true
	}
	var out []string
	for ord := 0; len(out) < n; ord++ {
		if name := workerpod.Name(in.Service.Name, in.Revision, ord); !used[name] {
			out = append(out, name)
		}
	}
	return out
}

// unschedulable is the condition by which the scheduler refused to bind an
// unbound pod (its LastTransitionTime says since when); nil if none.
func unschedulable(pod *corev1.Pod) *corev1.PodCondition {
	if pod.Spec.NodeName != "" {
		return nil
	}
	for i := range pod.Status.Conditions {
		c := &pod.Status.Conditions[i]
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return c
		}
	}
	return nil
}

func rank(b bool) int {
	if b {
		return 1
	}
	return 0
}

func minPositive(a, b time.Duration) time.Duration {
	if a <= 0 {
		return b
	}
	return min(a, b)
}
