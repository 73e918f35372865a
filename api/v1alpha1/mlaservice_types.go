package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ModelPreset names a published DeepSeek architecture whose geometry and
// checkpoint size the operator knows.
// +kubebuilder:validation:Enum=deepseek-v2-lite;deepseek-v2;deepseek-v3
type ModelPreset string

const (
	PresetDeepSeekV2Lite ModelPreset = "deepseek-v2-lite"
	PresetDeepSeekV2     ModelPreset = "deepseek-v2"
	PresetDeepSeekV3     ModelPreset = "deepseek-v3"
)

// KVCacheDType is the storage format of the latent KV cache.
// +kubebuilder:validation:Enum=bf16;fp8
type KVCacheDType string

const (
	// KVCacheBF16 stores 576 bf16 values per token and layer (1,152 bytes).
	KVCacheBF16 KVCacheDType = "bf16"
	// KVCacheFP8 stores 512 fp8 latent values, four fp32 scales and 64 bf16
	// RoPE values per token and layer (656 bytes). The API accepts it so that
	// manifests need not change when an engine supports it; until then the
	// service reports it as unsupported and places nothing.
	KVCacheFP8 KVCacheDType = "fp8"
)

// PlacementStrategy chooses among the nodes where a worker fits.
// +kubebuilder:validation:Enum=MostCapacity;BinPack;Spread
type PlacementStrategy string

const (
	// MostCapacity puts each worker on the node whose GPUs hold the most
	// tokens per worker.
	MostCapacity PlacementStrategy = "MostCapacity"
	// BinPack fills nodes that already host workers first, keeping whole
	// nodes free for large jobs.
	BinPack PlacementStrategy = "BinPack"
	// Spread spreads workers across nodes, then across zones.
	Spread PlacementStrategy = "Spread"
)

// MLAServiceSpec is what the user asks for: a model, how its latent KV cache
// is sized, the longest context a worker must hold, and how many workers.
// +kubebuilder:validation:XValidation:rule="!has(self.model.preset) || self.contextLength <= 163840",message="contextLength exceeds the model's maximum of 163840 tokens (max_position_embeddings of the DeepSeek presets)"
// +kubebuilder:validation:XValidation:rule="!has(self.model.geometry) || !has(self.model.geometry.maxPositionEmbeddings) || self.contextLength <= self.model.geometry.maxPositionEmbeddings",message="contextLength exceeds model.geometry.maxPositionEmbeddings"
// +kubebuilder:validation:XValidation:rule="!has(self.rollout) || self.rollout.maxUnavailable + self.rollout.maxSurge >= 1",message="rollout.maxUnavailable and rollout.maxSurge cannot both be 0: a rollout could never make progress"
type MLAServiceSpec struct {
	// Model is the MLA model the workers serve.
	Model ModelSpec `json:"model"`

	// KVCache sizes and formats the paged latent KV cache.
	// +kubebuilder:default={}
	// +optional
	KVCache KVCacheSpec `json:"kvCache,omitempty"`

	// ContextLength is the longest sequence (prompt plus generated tokens)
	// that one worker must hold. A worker is only placed where at least one
	// sequence of this length fits in its KV cache. This is the knob cluster
	// operators tune: lower it to fit smaller GPUs, raise it for long
	// documents.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=16777216
	ContextLength int64 `json:"contextLength"`

	// GPUsPerWorker is how many GPUs of one node a worker uses (tensor
	// parallel). MLA has a single latent KV head, so every rank holds the
	// whole latent cache: more GPUs make room by spreading the weights, not
	// by sharding the cache.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=16
	// +optional
	GPUsPerWorker int32 `json:"gpusPerWorker,omitempty"`

	// Replicas is the number of workers. With autoscaling set the operator
	// owns this field; otherwise it can be driven through the scale
	// subresource (kubectl scale, HPA, KEDA).
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10000
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Autoscaling scales workers on KV-cache utilization. Leave it unset to
	// manage replicas yourself or with an external autoscaler.
	// +optional
	Autoscaling *AutoscalingSpec `json:"autoscaling,omitempty"`

	// Placement says which nodes may run workers and how to choose among them.
	// +kubebuilder:default={}
	// +optional
	Placement PlacementSpec `json:"placement,omitempty"`

	// Rollout bounds how many workers a change of image, context length, KV
	// settings or geometry may take down or add at once.
	// +optional
	Rollout *RolloutSpec `json:"rollout,omitempty"`

	// Worker shapes the worker pods.
	// +kubebuilder:default={}
	// +optional
	Worker WorkerSpec `json:"worker,omitempty"`
}

// ModelSpec names the model and gives its geometry, either as a preset or
// explicitly.
// +kubebuilder:validation:XValidation:rule="has(self.preset) != has(self.geometry)",message="set exactly one of model.preset and model.geometry"
// +kubebuilder:validation:XValidation:rule="has(self.preset) || has(self.weightsSize)",message="model.weightsSize is required with an explicit model.geometry (the operator only knows the presets' checkpoint sizes)"
type ModelSpec struct {
	// Name identifies the model to clients, for example
	// "deepseek-ai/DeepSeek-V3".
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Preset takes the geometry and checkpoint size from a published
	// DeepSeek configuration.
	// +optional
	Preset *ModelPreset `json:"preset,omitempty"`

	// Geometry describes an MLA model explicitly.
	// +optional
	Geometry *ModelGeometry `json:"geometry,omitempty"`

	// WeightsSize is the GPU memory the weights take, in bytes, across all of
	// a worker's GPUs. Defaults to the preset's checkpoint size (DeepSeek-V3:
	// its FP8 checkpoint, about 689 GB; V2 and V2-Lite: bf16).
	// +optional
	WeightsSize *resource.Quantity `json:"weightsSize,omitempty"`

	// Source says where the weights come from. The current engine does not
	// load weights; later work mounts them from here.
	// +optional
	Source *WeightsSource `json:"source,omitempty"`
}

// ModelGeometry is the part of an MLA model's configuration that decides the
// size of its latent KV cache and the shape of decode attention.
type ModelGeometry struct {
	// Layers is num_hidden_layers: every layer keeps its own latent cache.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	Layers int32 `json:"layers"`

	// KVLoRARank is kv_lora_rank, the width of the compressed latent (512
	// in every DeepSeek model). It is also the value head dimension the
	// engine returns.
	// +kubebuilder:default=512
	// +kubebuilder:validation:XValidation:rule="self == 512",message="kvLoraRank must be 512: the engine's decode kernel is built for a 512-wide latent"
	// +optional
	KVLoRARank int32 `json:"kvLoraRank,omitempty"`

	// QKRopeHeadDim is qk_rope_head_dim, the decoupled RoPE key width that
	// follows the latent in each cache row (64 in every DeepSeek model).
	// +kubebuilder:default=64
	// +kubebuilder:validation:XValidation:rule="self == 64",message="qkRopeHeadDim must be 64: the engine's decode kernel is built for 576-value rows (512 latent + 64 RoPE)"
	// +optional
	QKRopeHeadDim int32 `json:"qkRopeHeadDim,omitempty"`

	// QKNopeHeadDim is qk_nope_head_dim; with QKRopeHeadDim it sets the
	// softmax scale (DeepSeek: 128, so the scale is 192^-0.5).
	// +kubebuilder:default=128
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	// +optional
	QKNopeHeadDim int32 `json:"qkNopeHeadDim,omitempty"`

	// AttentionHeads is num_attention_heads, the query heads that share the
	// one latent KV head.
	// +kubebuilder:validation:Enum=16;32;64;128
	AttentionHeads int32 `json:"attentionHeads"`

	// MaxPositionEmbeddings is the longest context the model supports.
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxPositionEmbeddings *int64 `json:"maxPositionEmbeddings,omitempty"`
}

// WeightsSource says where weights are read from; exactly one is set.
// +kubebuilder:validation:XValidation:rule="has(self.persistentVolumeClaim) != has(self.hostPath)",message="set exactly one of source.persistentVolumeClaim and source.hostPath"
type WeightsSource struct {
	// PersistentVolumeClaim mounts the weights from a claim in the service's
	// namespace.
	// +optional
	PersistentVolumeClaim *corev1.PersistentVolumeClaimVolumeSource `json:"persistentVolumeClaim,omitempty"`
	// HostPath reads the weights from a directory on the node.
	// +kubebuilder:validation:Pattern=`^/`
	// +optional
	HostPath *string `json:"hostPath,omitempty"`
}

// KVCacheSpec sizes the paged latent KV cache the way vLLM sizes its pool:
// a fraction of GPU memory, less weights and a reserve.
type KVCacheSpec struct {
	// DType is the cache format. fp8 is accepted but no engine supports it
	// yet: a service that asks for it reports KVCacheDTypeSupported=False.
	// +kubebuilder:default=bf16
	// +optional
	DType KVCacheDType `json:"dtype,omitempty"`

	// PageSize is the number of tokens per cache page. The engine uses
	// FlashMLA's page of 64 tokens.
	// +kubebuilder:default=64
	// +kubebuilder:validation:XValidation:rule="self == 64",message="pageSize must be 64: the decode engine's pages hold 64 tokens"
	// +optional
	PageSize int32 `json:"pageSize,omitempty"`

	// GPUMemoryUtilization is the fraction of each GPU's memory the worker
	// may use for weights, reserve and cache, like vLLM's
	// --gpu-memory-utilization.
	// +kubebuilder:default=0.9
	// +kubebuilder:validation:Type=number
	// +kubebuilder:validation:XValidation:rule="self > 0.0 && self <= 0.98",message="gpuMemoryUtilization must be greater than 0 and at most 0.98 (the driver and other processes need the rest)"
	// +optional
	GPUMemoryUtilization float64 `json:"gpuMemoryUtilization,omitempty"`

	// Reserve is GPU memory kept per GPU for activations and workspace, on
	// top of the weights.
	// +kubebuilder:default="2Gi"
	// +optional
	Reserve *resource.Quantity `json:"reserve,omitempty"`
}

// AutoscalingSpec scales workers on KV-cache utilization.
// +kubebuilder:validation:XValidation:rule="self.minReplicas <= self.maxReplicas",message="autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
type AutoscalingSpec struct {
	// MinReplicas is the fewest workers.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +optional
	MinReplicas int32 `json:"minReplicas"`

	// MaxReplicas is the most workers.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	MaxReplicas int32 `json:"maxReplicas"`

	// TargetKVUtilization is the fraction of reported KV capacity in use
	// that the autoscaler aims for. Within about 10 % of it nothing changes.
	// +kubebuilder:default=0.7
	// +kubebuilder:validation:Type=number
	// +kubebuilder:validation:XValidation:rule="self > 0.0 && self <= 1.0",message="targetKVUtilization must be greater than 0 and at most 1"
	// +optional
	TargetKVUtilization float64 `json:"targetKVUtilization,omitempty"`

	// ScaleUpStabilization is how long utilization must call for more
	// workers before they are added: the lowest recommendation in the window
	// wins.
	// +kubebuilder:default="30s"
	// +optional
	ScaleUpStabilization *metav1.Duration `json:"scaleUpStabilization,omitempty"`

	// ScaleDownStabilization is how long utilization must call for fewer
	// workers before one is drained: the highest recommendation in the
	// window wins.
	// +kubebuilder:default="5m"
	// +optional
	ScaleDownStabilization *metav1.Duration `json:"scaleDownStabilization,omitempty"`

	// DrainGracePeriod is how long a worker chosen for scale-down may keep
	// serving the sequences it holds before it is stopped.
	// +kubebuilder:default="5m"
	// +optional
	DrainGracePeriod *metav1.Duration `json:"drainGracePeriod,omitempty"`
}

// PlacementSpec selects nodes and chooses among them.
type PlacementSpec struct {
	// Strategy chooses among nodes where a worker fits.
	// +kubebuilder:default=MostCapacity
	// +optional
	Strategy PlacementStrategy `json:"strategy,omitempty"`

	// NodeSelector restricts workers to nodes with these labels.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// Tolerations let workers onto tainted nodes (GPU nodes often are).
	// +optional
	// +listType=atomic
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// GPUResourceName is the extended resource that counts GPUs.
	// +kubebuilder:default="nvidia.com/gpu"
	// +kubebuilder:validation:MinLength=1
	// +optional
	GPUResourceName string `json:"gpuResourceName,omitempty"`

	// MinComputeCapability is the lowest CUDA compute capability the engine
	// needs, as "major.minor" (the Hopper kernel needs "9.0"). Unset accepts
	// any GPU.
	// +kubebuilder:validation:Pattern=`^[0-9]+\.[0-9]+$`
	// +optional
	MinComputeCapability string `json:"minComputeCapability,omitempty"`
}

// RolloutSpec bounds a rolling update of workers.
type RolloutSpec struct {
	// MaxUnavailable is how many workers may be down during a rollout.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxUnavailable int32 `json:"maxUnavailable"`

	// MaxSurge is how many workers above replicas may exist during a
	// rollout. GPU clusters seldom have spare GPUs, so it defaults to 0.
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxSurge int32 `json:"maxSurge"`
}

// WorkerSpec shapes worker pods: the container and the pod-level settings a
// user needs.
type WorkerSpec struct {
	// Image is the worker container image.
	// +kubebuilder:default="ghcr.io/mla-operator/worker:latest"
	// +kubebuilder:validation:MinLength=1
	// +optional
	Image string `json:"image,omitempty"`

	// ImagePullPolicy of the worker container.
	// +optional
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// Port the worker serves its API on.
	// +kubebuilder:default=8080
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port int32 `json:"port,omitempty"`

	// Resources of the worker container besides GPUs, which the operator
	// sets from gpusPerWorker.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// Env adds environment variables to the worker container.
	// +optional
	// +listType=map
	// +listMapKey=name
	Env []corev1.EnvVar `json:"env,omitempty"`

	// Args adds arguments to the worker command.
	// +optional
	// +listType=atomic
	Args []string `json:"args,omitempty"`

	// Labels are added to worker pods.
	// +optional
	Labels map[string]string `json:"labels,omitempty"`

	// Annotations are added to worker pods.
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`

	// ServiceAccountName runs workers as this service account. It needs
	// get and patch on pods so a worker can report on its own pod.
	// +optional
	ServiceAccountName string `json:"serviceAccountName,omitempty"`

	// ImagePullSecrets for the worker image.
	// +optional
	// +listType=atomic
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`

	// PriorityClassName of worker pods.
	// +optional
	PriorityClassName string `json:"priorityClassName,omitempty"`

	// TerminationGracePeriodSeconds bounds how long a stopping worker may
	// take to finish the sequences it holds.
	// +kubebuilder:validation:Minimum=0
	// +optional
	TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds,omitempty"`
}

// MLAServiceStatus is what the operator and its workers observe.
type MLAServiceStatus struct {
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Replicas is the number of worker pods that exist and are not being
	// deleted.
	// +optional
	Replicas int32 `json:"replicas"`

	// ReadyReplicas is the number of Ready workers with a fresh report.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas"`

	// UpdatedReplicas is the number of workers on the current spec.
	// +optional
	UpdatedReplicas int32 `json:"updatedReplicas"`

	// Selector is the label selector of worker pods, for the scale
	// subresource.
	// +optional
	Selector string `json:"selector,omitempty"`

	// KVCache totals what Ready workers with a fresh report hold.
	// +optional
	KVCache KVCacheStatus `json:"kvCache,omitempty"`

	// MaxContextLength is the longest sequence any placed worker can hold,
	// as predicted by the capacity model or reported by the worker.
	// +optional
	MaxContextLength int64 `json:"maxContextLength,omitempty"`

	// GPUProducts says, per GPU product in the cluster, what a worker of this
	// service would hold there and whether contextLength fits.
	// +optional
	// +listType=map
	// +listMapKey=product
	GPUProducts []GPUProductCapacity `json:"gpuProducts,omitempty"`

	// Workers has one entry per worker pod.
	// +optional
	// +listType=map
	// +listMapKey=pod
	Workers []WorkerStatus `json:"workers,omitempty"`

	// Conditions: Ready, Progressing, ContextLimitFeasible, Degraded.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// KVCacheStatus totals latent KV-cache tokens.
type KVCacheStatus struct {
	// CapacityTokens is the tokens all counted workers can hold.
	CapacityTokens int64 `json:"capacityTokens"`
	// UsedTokens is the tokens they hold now.
	UsedTokens int64 `json:"usedTokens"`
	// Utilization is UsedTokens / CapacityTokens, 0 when there is no
	// capacity.
	// +kubebuilder:validation:Type=number
	Utilization float64 `json:"utilization"`
}

// GPUProductCapacity is what one GPU product offers this service.
type GPUProductCapacity struct {
	// Product is the nvidia.com/gpu.product label value.
	Product string `json:"product"`
	// MemoryMiB is the memory of one GPU.
	MemoryMiB int64 `json:"memoryMiB"`
	// Nodes is how many eligible nodes carry this product.
	Nodes int32 `json:"nodes"`
	// TokensPerWorker is the predicted KV capacity of one worker.
	TokensPerWorker int64 `json:"tokensPerWorker"`
	// MaxContextLength is the longest sequence one worker could hold.
	MaxContextLength int64 `json:"maxContextLength"`
	// Feasible is true when one sequence of contextLength fits.
	Feasible bool `json:"feasible"`
	// Message explains an infeasible product.
	// +optional
	Message string `json:"message,omitempty"`
}

// WorkerStatus is one worker as placed and as it reports.
type WorkerStatus struct {
	// Pod is the worker pod's name.
	Pod string `json:"pod"`
	// Node is the node it was placed on.
	// +optional
	Node string `json:"node,omitempty"`
	// GPUProduct is the GPU it runs on.
	// +optional
	GPUProduct string `json:"gpuProduct,omitempty"`
	// PredictedCapacityTokens is what the capacity model predicted.
	// +optional
	PredictedCapacityTokens int64 `json:"predictedCapacityTokens,omitempty"`
	// CapacityTokens is what the worker reported, 0 until it reports.
	// +optional
	CapacityTokens int64 `json:"capacityTokens"`
	// UsedTokens is the tokens it holds.
	// +optional
	UsedTokens int64 `json:"usedTokens"`
	// ActiveSequences is the sequences it holds.
	// +optional
	ActiveSequences int32 `json:"activeSequences"`
	// WaitingRequests is the requests it turned away for lack of room in
	// its last report interval.
	// +optional
	WaitingRequests int32 `json:"waitingRequests"`
	// Ready is true when the pod is Ready and its report is fresh.
	Ready bool `json:"ready"`
	// Draining is true when the worker stopped admitting sequences.
	// +optional
	Draining bool `json:"draining,omitempty"`
	// Updated is true when the pod runs the current spec.
	// +optional
	Updated bool `json:"updated,omitempty"`
	// LastReportTime is the time of the worker's latest report, by the
	// worker's clock (the operator judges freshness by its own).
	// +optional
	LastReportTime *metav1.Time `json:"lastReportTime,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=mla,categories=all
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.status.readyReplicas`,description="Ready workers"
// +kubebuilder:printcolumn:name="Desired",type=integer,JSONPath=`.spec.replicas`,priority=1
// +kubebuilder:printcolumn:name="Capacity",type=integer,JSONPath=`.status.kvCache.capacityTokens`,description="KV-cache tokens held by ready workers"
// +kubebuilder:printcolumn:name="Utilization",type=number,format=float,JSONPath=`.status.kvCache.utilization`
// +kubebuilder:printcolumn:name="Max context",type=integer,JSONPath=`.status.maxContextLength`
// +kubebuilder:printcolumn:name="Context",type=integer,JSONPath=`.spec.contextLength`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`

// MLAService runs a DeepSeek-style MLA model on GPU workers placed by
// KV-cache capacity.
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 63",message="metadata.name must be at most 63 characters: it becomes the inference.mla.dev/service label of worker pods, and label values are limited to 63"
type MLAService struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   MLAServiceSpec   `json:"spec,omitempty"`
	Status MLAServiceStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// MLAServiceList is a list of MLAServices.
type MLAServiceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MLAService `json:"items"`
}

func init() {
	SchemeBuilder.Register(&MLAService{}, &MLAServiceList{})
}
