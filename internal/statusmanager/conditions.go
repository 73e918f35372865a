package statusmanager

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// Feasibility is whether the service's spec can be served at all.
type Feasibility struct {
	// Status of ContextLimitFeasible: Unknown when no eligible GPU node
	// exists to judge by.
	Status  metav1.ConditionStatus
	Reason  string
	Message string
	// Blocked is true when no worker is created: the context does not fit
	// any eligible GPU, the KV dtype is unsupported, or the spec is invalid.
	Blocked bool
}

// Observation is what one reconcile found and did.
type Observation struct {
	Generation  int64
	Desired     int32
	Aggregate   Aggregate
	Feasibility Feasibility
	// Unplaced is how many workers found no node; Rejections says why.
	Unplaced   int
	Rejections string
	// Failed names worker pods that failed or were evicted.
	Failed []string
	// Rolling is true while workers of an old revision remain.
	Rolling bool
	// ScalingDown is true while more workers run than desired.
	ScalingDown bool
}

// Conditions returns conditions updated from obs; lastTransitionTime moves
// only when a status changes.
func Conditions(existing []metav1.Condition, obs Observation) []metav1.Condition {
	conds := make([]metav1.Condition, len(existing))
	copy(conds, existing)
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&conds, metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: obs.Generation})
	}
	agg, f := obs.Aggregate, obs.Feasibility

	set(v1alpha1.ConditionContextLimitFeasible, f.Status, f.Reason, f.Message)

	if agg.ReadyReplicas >= obs.Desired && !(f.Blocked && obs.Desired > 0) {
		set(v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonAllWorkersReady,
			fmt.Sprintf("%d of %d workers ready, holding %d KV tokens", agg.ReadyReplicas, obs.Desired, agg.KVCache.CapacityTokens))
	} else {
		set(v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonWorkersNotReady,
			fmt.Sprintf("%d of %d workers ready with a fresh report", agg.ReadyReplicas, obs.Desired))
	}

	switch {
	case f.Blocked:
		set(v1alpha1.ConditionProgressing, metav1.ConditionFalse, f.Reason, "no workers are created until the spec can be served")
	case obs.ScalingDown:
		set(v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonScalingDown,
			fmt.Sprintf("draining workers: %d running, %d desired", agg.Replicas, obs.Desired))
	case obs.Rolling:
		set(v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonRollingUpdate,
			fmt.Sprintf("%d of %d workers updated", agg.UpdatedReplicas, obs.Desired))
	case agg.Replicas != obs.Desired || agg.ReadyReplicas < obs.Desired:
		set(v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonCreatingWorkers,
			fmt.Sprintf("%d workers exist, %d ready, %d desired", agg.Replicas, agg.ReadyReplicas, obs.Desired))
	default:
		set(v1alpha1.ConditionProgressing, metav1.ConditionFalse, v1alpha1.ReasonStable, "all workers are on the current spec")
	}

	switch {
	case f.Blocked:
		set(v1alpha1.ConditionDegraded, metav1.ConditionTrue, f.Reason, f.Message)
	case obs.Unplaced > 0:
		set(v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonInsufficientGPUs,
			fmt.Sprintf("%d workers cannot be placed: %s", obs.Unplaced, obs.Rejections))
	case len(obs.Failed) > 0 || len(agg.Errors) > 0:
		var parts []string
		if len(obs.Failed) > 0 {
			parts = append(parts, "replacing failed workers "+strings.Join(obs.Failed, ", "))
		}
		parts = append(parts, agg.Errors...)
		set(v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonWorkerFailed, truncate(strings.Join(parts, "; ")))
	default:
		set(v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonAsExpected, "")
	}
	return conds
}

// maxMessage keeps condition messages well under the API's 32 KiB limit.
const maxMessage = 4096

func truncate(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	return s[:maxMessage-3] + "..."
}
