package v1alpha1

// Condition types of an MLAService.
const (
	// ConditionReady is True when at least the desired number of workers
	// are Ready with fresh reports.
	ConditionReady = "Ready"
	// ConditionProgressing is True while workers are being created,
	// replaced or rolled.
	ConditionProgressing = "Progressing"
	// ConditionContextLimitFeasible is False when no eligible GPU can hold
	// one sequence of spec.contextLength; its message says what is needed,
	// what is available and the longest context that fits.
	ConditionContextLimitFeasible = "ContextLimitFeasible"
	// ConditionDegraded is True when something needs a person: workers that
	// cannot be placed, fail, or report errors.
	ConditionDegraded = "Degraded"
)

// Condition reasons.
const (
	ReasonAllWorkersReady    = "AllWorkersReady"
	ReasonWorkersNotReady    = "WorkersNotReady"
	ReasonCreatingWorkers    = "CreatingWorkers"
	ReasonRollingUpdate      = "RollingUpdate"
	ReasonScalingDown        = "ScalingDown"
	ReasonStable             = "Stable"
	ReasonFits               = "Fits"
	ReasonContextTooLong     = "ContextTooLong"
	ReasonNoGPUNodes         = "NoEligibleGPUNodes"
	ReasonUnsupportedKVDType = "UnsupportedKVCacheDType"
	ReasonInsufficientGPUs   = "InsufficientGPUs"
	ReasonWorkerFailed       = "WorkerFailed"
	ReasonAsExpected         = "AsExpected"
)
