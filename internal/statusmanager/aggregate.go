// Package statusmanager turns what the cluster shows about an MLAService's
// workers (their pods, the reports they write on them) into the service's
// status, and writes it. The operator is the only writer of MLAService
// status; workers write only annotations on their own pods.
package statusmanager

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/autoscale"
	"github.com/mla-operator/mla-operator/internal/nodeinfo"
	"github.com/mla-operator/mla-operator/internal/workerreport"
)

// Aggregate is the workers of a service as the status shows them.
type Aggregate struct {
	// Replicas counts live workers (not terminal, not being deleted).
	Replicas int32
	// ReadyReplicas counts the workers whose capacity is counted.
	ReadyReplicas int32
	// UpdatedReplicas counts live workers of the current revision.
	UpdatedReplicas  int32
	KVCache          v1alpha1.KVCacheStatus
	MaxContextLength int64
	Workers          []v1alpha1.WorkerStatus
	// Load is what the counted workers hold, for the autoscaler.
	Load autoscale.Load
	// Errors lists workers that report they cannot serve, or whose report
	// cannot be read.
	Errors []string
	// NextStale is how long until the first counted report goes stale
	// (by the ages given); 0 when no report is counted.
	NextStale time.Duration
}

// AggregateWorkers summarizes the service's worker pods (non-terminal ones;
// terminal pods are skipped); ages says how old each report is.
func AggregateWorkers(pods []corev1.Pod, revision string, contextLength int64, ages workerreport.Ages, staleAfter time.Duration) Aggregate {
	a := Aggregate{Load: autoscale.Load{ContextLength: contextLength}}
	for i := range pods {
		pod := &pods[i]
		if nodeinfo.Terminal(pod) {
			continue
		}
		w := v1alpha1.WorkerStatus{
			Pod:        pod.Name,
			Node:       nodeinfo.PodNode(pod),
			GPUProduct: pod.Annotations[v1alpha1.AnnotationGPUProduct],
			Updated:    pod.Labels[v1alpha1.LabelRevision] == revision,
			Draining:   pod.DeletionTimestamp != nil,
		}
		w.PredictedCapacityTokens, _ = strconv.ParseInt(pod.Annotations[v1alpha1.AnnotationPredictedTokens], 10, 64)
		if pod.DeletionTimestamp == nil {
			a.Replicas++
			if w.Updated {
				a.UpdatedReplicas++
			}
		}
		maxContext := w.PredictedCapacityTokens
		r, err := workerreport.Parse(pod)
		if err != nil {
			a.Errors = append(a.Errors, err.Error())
		}
		if r != nil {
			w.LastReportTime = ptrTime(r.Time)
			w.Draining = w.Draining || r.Draining
			if r.Error != "" {
				a.Errors = append(a.Errors, fmt.Sprintf("worker %s: %s", pod.Name, r.Error))
			}
			if workerreport.Fresh(pod, r, ages, staleAfter) {
				maxContext = r.MaxContextLength
			}
		}
		if workerreport.Counted(pod, r, ages, staleAfter) {
			w.Ready = true
			w.CapacityTokens, w.UsedTokens = r.CapacityTokens, r.UsedTokens
			w.ActiveSequences, w.WaitingRequests = r.ActiveSequences, r.WaitingRequests
			a.ReadyReplicas++
			a.KVCache.CapacityTokens += r.CapacityTokens
			a.KVCache.UsedTokens += r.UsedTokens
			a.Load.Workers++
			a.Load.CapacityTokens += r.CapacityTokens
			a.Load.UsedTokens += r.UsedTokens
			a.Load.ActiveSequences += r.ActiveSequences
			a.Load.WaitingRequests += r.WaitingRequests
			if left := staleAfter - ages(pod, r); a.NextStale == 0 || left < a.NextStale {
				a.NextStale = max(left, time.Millisecond)
			}
		}
		if pod.DeletionTimestamp == nil {
			a.MaxContextLength = max(a.MaxContextLength, maxContext)
		}
		a.Workers = append(a.Workers, w)
	}
	if a.KVCache.CapacityTokens > 0 {
		a.KVCache.Utilization = float64(a.KVCache.UsedTokens) / float64(a.KVCache.CapacityTokens)
	}
	slices.SortFunc(a.Workers, func(x, y v1alpha1.WorkerStatus) int { return strings.Compare(x.Pod, y.Pod) })
	slices.Sort(a.Errors)
	return a
}

func ptrTime(t metav1.Time) *metav1.Time { return &t }
