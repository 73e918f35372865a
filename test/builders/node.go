package builders

import (
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// GPUKind is a GPU as GPU Feature Discovery labels it.
type GPUKind struct {
	Product      string
	MemoryMiB    int64
	ComputeMajor int
	ComputeMinor int
}

// The GPUs of the default local cluster and the placement tables.
var (
	H200     = GPUKind{"NVIDIA-H200", 143771, 9, 0}
	H100     = GPUKind{"NVIDIA-H100-80GB-HBM3", 81559, 9, 0}
	A100_40G = GPUKind{"NVIDIA-A100-SXM4-40GB", 40960, 8, 0}
	L4       = GPUKind{"NVIDIA-L4", 23034, 8, 9}
)

// NodeBuilder builds a Ready, schedulable node.
type NodeBuilder struct{ node corev1.Node }

// Node starts a builder for a node without GPUs.
func Node(name string) *NodeBuilder {
	return &NodeBuilder{node: corev1.Node{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name}},
		Status: corev1.NodeStatus{
			Capacity:    corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64"), corev1.ResourceMemory: resource.MustParse("512Gi"), corev1.ResourcePods: resource.MustParse("110")},
			Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64"), corev1.ResourceMemory: resource.MustParse("512Gi"), corev1.ResourcePods: resource.MustParse("110")},
			Conditions:  []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady"}},
		},
	}}
}

// GPUNode starts a builder for a node with count GPUs of kind, labelled as
// GPU Feature Discovery would and with allocatable nvidia.com/gpu.
func GPUNode(name string, kind GPUKind, count int) *NodeBuilder {
	return Node(name).GPUs(kind, count)
}

// GPUs labels the node with count GPUs of kind.
func (b *NodeBuilder) GPUs(kind GPUKind, count int) *NodeBuilder {
	l := b.node.Labels
	l[v1alpha1.LabelGPUProduct] = kind.Product
	l[v1alpha1.LabelGPUMemoryMiB] = strconv.FormatInt(kind.MemoryMiB, 10)
	l[v1alpha1.LabelGPUCount] = strconv.Itoa(count)
	l[v1alpha1.LabelGPUComputeMajor] = strconv.Itoa(kind.ComputeMajor)
	l[v1alpha1.LabelGPUComputeMinor] = strconv.Itoa(kind.ComputeMinor)
	q := *resource.NewQuantity(int64(count), resource.DecimalSI)
	b.node.Status.Capacity[v1alpha1.DefaultGPUResource] = q
	b.node.Status.Allocatable[v1alpha1.DefaultGPUResource] = q
	return b
}

// Allocatable overrides the allocatable GPUs (fewer than the labels say,
// as when some are unhealthy).
func (b *NodeBuilder) Allocatable(gpus int) *NodeBuilder {
	b.node.Status.Allocatable[v1alpha1.DefaultGPUResource] = *resource.NewQuantity(int64(gpus), resource.DecimalSI)
	return b
}

// Zone sets topology.kubernetes.io/zone.
func (b *NodeBuilder) Zone(z string) *NodeBuilder { return b.Label(corev1.LabelTopologyZone, z) }

// Label sets a label.
func (b *NodeBuilder) Label(k, v string) *NodeBuilder {
	b.node.Labels[k] = v
	return b
}

// Taint adds a taint.
func (b *NodeBuilder) Taint(key, value string, effect corev1.TaintEffect) *NodeBuilder {
	b.node.Spec.Taints = append(b.node.Spec.Taints, corev1.Taint{Key: key, Value: value, Effect: effect})
	return b
}

// Unschedulable cordons the node.
func (b *NodeBuilder) Unschedulable() *NodeBuilder {
	b.node.Spec.Unschedulable = true
	return b
}

// NotReady marks the node's Ready condition False.
func (b *NodeBuilder) NotReady() *NodeBuilder {
	b.node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KubeletNotReady"}}
	return b
}

// Obj returns a copy of the node.
func (b *NodeBuilder) Obj() *corev1.Node { return b.node.DeepCopy() }
