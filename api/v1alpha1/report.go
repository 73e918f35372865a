package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// Report is what a worker says about itself, written as JSON into the
// AnnotationReport annotation of its own pod. One pod, one writer: reports of
// many workers never contend, and a report disappears with its pod.
// +kubebuilder:object:generate=false
type Report struct {
	// CapacityTokens is the tokens the worker's KV pool holds.
	CapacityTokens int64 `json:"capacityTokens"`
	// UsedTokens is the tokens reserved by admitted sequences.
	UsedTokens int64 `json:"usedTokens"`
	// ActiveSequences is the sequences admitted and not freed.
	ActiveSequences int32 `json:"activeSequences"`
	// WaitingRequests is the admissions refused for lack of room since the
	// previous report.
	WaitingRequests int32 `json:"waitingRequests"`
	// MaxContextLength is the longest sequence the pool can hold.
	MaxContextLength int64 `json:"maxContextLength"`
	// GPUProduct is the GPU the worker found (or simulates).
	GPUProduct string `json:"gpuProduct,omitempty"`
	// Device is "cuda" or "cpu".
	Device string `json:"device,omitempty"`
	// Ready is true while the worker admits sequences.
	Ready bool `json:"ready"`
	// Draining is true once the worker stopped admitting (SIGTERM).
	Draining bool `json:"draining,omitempty"`
	// Error is set when the worker cannot serve, for example when one
	// sequence of the context length does not fit.
	Error string `json:"error,omitempty"`
	// Time is when the report was made, by the worker's clock. The operator
	// ages a report from when it sees this value change (or the first report
	// appear), by its own clock, and takes the value at its word only for a
	// pod it has never seen before, as after a restart; it ignores reports
	// older than its staleness bound.
	Time metav1.Time `json:"time"`
}
