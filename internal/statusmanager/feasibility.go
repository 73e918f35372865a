package statusmanager

import (
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/placement"
)

// ReasonInvalidSpec is ContextLimitFeasible's reason when the spec cannot
// be resolved to a capacity configuration.
const ReasonInvalidSpec = "InvalidSpec"

// maxListedRejections bounds the nodes a message names one by one.
const maxListedRejections = 8

// JudgeFeasibility says whether the service can be served: its spec
// resolves (specErr is capacity.FromSpec's error), its KV dtype is
// supported, and one sequence of its context length fits at least one
// eligible GPU product (res is a placement over the cluster).
func JudgeFeasibility(spec *v1alpha1.MLAServiceSpec, specErr error, res placement.Result) Feasibility {
	switch {
	case specErr != nil:
		return Feasibility{Status: metav1.ConditionUnknown, Reason: ReasonInvalidSpec, Blocked: true,
			Message: fmt.Sprintf("the spec cannot be sized: %v", specErr)}
	case spec.KVCache.DType == v1alpha1.KVCacheFP8:
		return Feasibility{Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonUnsupportedKVDType, Blocked: true,
			Message: "kvCache.dtype fp8 is not supported by any decode engine yet; use bf16"}
	case len(res.Products) == 0:
		return Feasibility{Status: metav1.ConditionUnknown, Reason: v1alpha1.ReasonNoGPUNodes, Blocked: true,
			Message: "no eligible GPU node: " + SummarizeRejections(res.Rejected)}
	case !res.Feasible():
		msgs := make([]string, len(res.ContextErrors))
		for i, e := range res.ContextErrors {
			msgs[i] = e.Error()
		}
		return Feasibility{Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonContextTooLong, Blocked: true,
			Message: truncate(strings.Join(msgs, "; "))}
	}
	var fits []string
	for _, p := range res.Products {
		if p.Feasible {
			fits = append(fits, fmt.Sprintf("%s (%d tokens per worker)", p.Product, p.TokensPerWorker))
		}
	}
	return Feasibility{Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonFits,
		Message: fmt.Sprintf("one sequence of %d tokens fits on %s", spec.ContextLength, strings.Join(fits, ", "))}
}

// SummarizeRejections says why nodes were rejected, naming the first few.
func SummarizeRejections(rs []placement.Rejection) string {
	if len(rs) == 0 {
		return "the cluster has no nodes"
	}
	parts := make([]string, 0, maxListedRejections+1)
	for i, r := range rs {
		if i == maxListedRejections {
			parts = append(parts, fmt.Sprintf("and %d more nodes", len(rs)-i))
			break
		}
		parts = append(parts, fmt.Sprintf("%s: %s", r.Node, r.Reason))
	}
	return strings.Join(parts, "; ")
}
