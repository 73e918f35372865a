// Package workerreport reads what a worker says about itself: the Report it
// writes as JSON on its own pod, and whether that report is fresh enough,
// and the pod Ready enough, for its capacity to count.
package workerreport

import (
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// DefaultStaleAfter is how old a report may be before it stops counting:
// three of the workers' 30-second heartbeats.
const DefaultStaleAfter = 90 * time.Second

// Parse reads a worker's report from its pod; nil without one.
func Parse(pod *corev1.Pod) (*v1alpha1.Report, error) {
	raw, ok := pod.Annotations[v1alpha1.AnnotationReport]
	if !ok {
		return nil, nil
	}
	var r v1alpha1.Report
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return nil, fmt.Errorf("pod %s: annotation %s: %w", pod.Name, v1alpha1.AnnotationReport, err)
	}
	return &r, nil
}

// PodReady reports whether the pod's Ready condition is True.
func PodReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Ages says how old a pod's report is. The operator's comes from
// internal/reportclock (its own clock, from when it saw the report's time
// change); SinceReportTime takes the worker's clock at its word. It is
// called only for reports that carry a time.
type Ages func(pod *corev1.Pod, r *v1alpha1.Report) time.Duration

// SinceReportTime ages reports by now - report time, trusting the worker's
// clock: for tests and tools that look at a snapshot once.
func SinceReportTime(now time.Time) Ages {
	return func(_ *corev1.Pod, r *v1alpha1.Report) time.Duration { return now.Sub(r.Time.Time) }
}

// Fresh reports whether the pod's report r is at most staleAfter old by ages.
func Fresh(pod *corev1.Pod, r *v1alpha1.Report, ages Ages, staleAfter time.Duration) bool {
	return r != nil && !r.Time.IsZero() && ages(pod, r) <= staleAfter
}

// Counted reports whether a worker's capacity counts: its pod is Ready and
// not being deleted, and its report is fresh, ready, not draining and
// error-free. Capacity that no such worker reports is never promised.
func Counted(pod *corev1.Pod, r *v1alpha1.Report, ages Ages, staleAfter time.Duration) bool {
	return pod.DeletionTimestamp == nil && PodReady(pod) && r != nil &&
		r.Ready && !r.Draining && r.Error == "" && Fresh(pod, r, ages, staleAfter)
}
