package v1alpha1

// Labels and annotations on worker pods.
const (
	// LabelService names the MLAService that owns a worker pod.
	LabelService = "inference.mla.dev/service"
	// LabelRevision is a hash of the spec fields a worker is built from; a
	// worker whose revision differs from the service's is rolled.
	LabelRevision = "inference.mla.dev/revision"
	// LabelComponent is "worker" on worker pods.
	LabelComponent = "app.kubernetes.io/component"
	// LabelManagedBy is "mla-operator" on everything the operator creates.
	LabelManagedBy = "app.kubernetes.io/managed-by"

	// ComponentWorker is LabelComponent's value on worker pods.
	ComponentWorker = "worker"
	// ManagedByValue is LabelManagedBy's value.
	ManagedByValue = "mla-operator"

	// AnnotationReport holds the worker's latest Report as JSON. The worker
	// writes it on its own pod; the operator aggregates it into the
	// service's status.
	AnnotationReport = "inference.mla.dev/report"
	// AnnotationPredictedTokens is the KV capacity the capacity model
	// predicted for the worker when it was placed.
	AnnotationPredictedTokens = "inference.mla.dev/predicted-capacity-tokens"
	// AnnotationGPUProduct is the GPU product of the node a worker was
	// placed on.
	AnnotationGPUProduct = "inference.mla.dev/gpu-product"
	// AnnotationDrainReason says why the operator is stopping a worker.
	AnnotationDrainReason = "inference.mla.dev/drain-reason"
)

// GPU Feature Discovery labels that describe a node's GPUs. The operator
// reads them and never guesses: a node without them is not a GPU node.
const (
	LabelGPUProduct      = "nvidia.com/gpu.product"
	LabelGPUMemoryMiB    = "nvidia.com/gpu.memory"
	LabelGPUCount        = "nvidia.com/gpu.count"
	LabelGPUComputeMajor = "nvidia.com/gpu.compute.major"
	LabelGPUComputeMinor = "nvidia.com/gpu.compute.minor"

	// DefaultGPUResource is the extended resource that counts GPUs.
	DefaultGPUResource = "nvidia.com/gpu"
)

// Environment variables the operator sets on worker containers. Each worker
// flag of the same meaning defaults to them (see `worker --help`).
const (
	EnvServiceName          = "MLA_SERVICE_NAME"
	EnvPodName              = "MLA_POD_NAME"
	EnvPodNamespace         = "MLA_POD_NAMESPACE"
	EnvNodeName             = "MLA_NODE_NAME"
	EnvPodIP                = "MLA_POD_IP"
	EnvPort                 = "MLA_PORT"
	EnvModelName            = "MLA_MODEL_NAME"
	EnvLayers               = "MLA_LAYERS"
	EnvKVLoRARank           = "MLA_KV_LORA_RANK"
	EnvQKRopeHeadDim        = "MLA_QK_ROPE_HEAD_DIM"
	EnvQKNopeHeadDim        = "MLA_QK_NOPE_HEAD_DIM"
	EnvAttentionHeads       = "MLA_ATTENTION_HEADS"
	EnvWeightsBytes         = "MLA_WEIGHTS_BYTES"
	EnvContextLength        = "MLA_CONTEXT_LENGTH"
	EnvKVDType              = "MLA_KV_DTYPE"
	EnvPageSize             = "MLA_PAGE_SIZE"
	EnvGPUMemoryUtilization = "MLA_GPU_MEMORY_UTILIZATION"
	EnvReserveBytes         = "MLA_RESERVE_BYTES"
	EnvGPUs                 = "MLA_GPUS"
	EnvDevice               = "MLA_DEVICE"
	// EnvSoftmaxScale is the model's attention softmax scale
	// (model.Geometry.SoftmaxScale: 192^-0.5 x YaRN mscale^2 for DeepSeek),
	// formatted with strconv.FormatFloat(v, 'g', -1, 64) so it round-trips.
	EnvSoftmaxScale = "MLA_SOFTMAX_SCALE"
	// EnvSimulatedGPU makes a CPU-mode worker size its pool as if it ran on
	// this GPU: "<product>:<memoryMiB>", set by the local cluster's process
	// runtime from the node's labels.
	EnvSimulatedGPU = "MLA_SIMULATED_GPU"
)
