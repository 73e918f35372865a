// Package nodeinfo reads what a node offers MLA workers: its GPUs as NVIDIA
// GPU Feature Discovery labels them, its allocatable GPUs, the GPUs the pods
// bound to it already request, and whether it is Ready and schedulable.
// It never guesses: a node without the labels has no GPU facts.
package nodeinfo

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// GPU is one node's GPUs as GPU Feature Discovery labels them.
type GPU struct {
	Product      string
	MemoryMiB    int64
	Count        int
	ComputeMajor int
	ComputeMinor int
}

// GPUOf reads the GPU Feature Discovery labels of node. It fails when the
// product or memory label is missing or malformed; the count and compute
// capability labels are optional (0 when absent).
func GPUOf(node *corev1.Node) (GPU, error) {
	l := node.Labels
	g := GPU{Product: l[v1alpha1.LabelGPUProduct]}
	if g.Product == "" {
		return GPU{}, fmt.Errorf("no %s label (GPU Feature Discovery)", v1alpha1.LabelGPUProduct)
	}
	mem, ok := l[v1alpha1.LabelGPUMemoryMiB]
	if !ok {
		return GPU{}, fmt.Errorf("no %s label (GPU Feature Discovery)", v1alpha1.LabelGPUMemoryMiB)
	}
	var err error
	if g.MemoryMiB, err = strconv.ParseInt(mem, 10, 64); err != nil || g.MemoryMiB <= 0 {
		return GPU{}, fmt.Errorf("label %s=%q is not a positive number of MiB", v1alpha1.LabelGPUMemoryMiB, mem)
	}
	for key, dst := range map[string]*int{
		v1alpha1.LabelGPUCount:        &g.Count,
		v1alpha1.LabelGPUComputeMajor: &g.ComputeMajor,
		v1alpha1.LabelGPUComputeMinor: &g.ComputeMinor,
	} {
		v, ok := l[key]
		if !ok {
			continue
		}
		if *dst, err = strconv.Atoi(v); err != nil || *dst < 0 {
			return GPU{}, fmt.Errorf("label %s=%q is not a non-negative integer", key, v)
		}
	}
	return g, nil
}

// ComputeCapability is a CUDA compute capability, major.minor.
type ComputeCapability struct{ Major, Minor int }

// ParseComputeCapability parses "major.minor".
func ParseComputeCapability(s string) (ComputeCapability, error) {
	maj, min, ok := strings.Cut(s, ".")
	if !ok {
		return ComputeCapability{}, fmt.Errorf("compute capability %q is not major.minor", s)
	}
	a, err1 := strconv.Atoi(maj)
	b, err2 := strconv.Atoi(min)
	if err1 != nil || err2 != nil || a < 0 || b < 0 {
		return ComputeCapability{}, fmt.Errorf("compute capability %q is not major.minor", s)
	}
	return ComputeCapability{a, b}, nil
}

// AtLeast reports whether g's compute capability is at least cc.
func (g GPU) AtLeast(cc ComputeCapability) bool {
	if g.ComputeMajor != cc.Major {
		return g.ComputeMajor > cc.Major
	}
	return g.ComputeMinor >= cc.Minor
}

// Ready reports whether the node's Ready condition is True.
func Ready(node *corev1.Node) bool {
	c := ReadyCondition(node)
	return c != nil && c.Status == corev1.ConditionTrue
}

// ReadyCondition returns the node's Ready condition, nil when it has none.
func ReadyCondition(node *corev1.Node) *corev1.NodeCondition {
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == corev1.NodeReady {
			return &node.Status.Conditions[i]
		}
	}
	return nil
}

// Allocatable is the node's allocatable amount of the GPU resource.
func Allocatable(node *corev1.Node, resource corev1.ResourceName) int64 {
	q, ok := node.Status.Allocatable[resource]
	if !ok {
		return 0
	}
	return q.Value()
}

// PodNode is the node a pod occupies: the node it is bound to, or, while it
// is not bound yet, the node its required node affinity pins it to by
// metadata.name (as worker pods and DaemonSet pods are pinned). Counting
// pinned pods keeps a just-created worker's GPUs from being promised twice
// before the scheduler binds it.
func PodNode(pod *corev1.Pod) string {
	if pod.Spec.NodeName != "" {
		return pod.Spec.NodeName
	}
	return PinnedNode(pod)
}

// PinnedNode is the single node name a pod's required node affinity allows
// through a matchFields metadata.name In term, "" when there is none.
func PinnedNode(pod *corev1.Pod) string {
	a := pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return ""
	}
	terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	if len(terms) != 1 {
		return ""
	}
	for _, f := range terms[0].MatchFields {
		if f.Key == "metadata.name" && f.Operator == corev1.NodeSelectorOpIn && len(f.Values) == 1 {
			return f.Values[0]
		}
	}
	return ""
}

// Terminal reports whether a pod has finished and holds no resources.
func Terminal(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

// PodRequest is what a pod requests of resource, as the scheduler counts
// it: the larger of the sum over its containers and its largest init
// container. A container that sets only a limit of an extended resource
// requests that limit.
func PodRequest(pod *corev1.Pod, resource corev1.ResourceName) int64 {
	var sum, initMax int64
	for i := range pod.Spec.Containers {
		sum += containerRequest(&pod.Spec.Containers[i], resource)
	}
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			sum += containerRequest(c, resource) // sidecars run beside the containers
			continue
		}
		initMax = max(initMax, containerRequest(c, resource))
	}
	return max(sum, initMax)
}

func containerRequest(c *corev1.Container, resource corev1.ResourceName) int64 {
	if q, ok := c.Resources.Requests[resource]; ok {
		return q.Value()
	}
	if q, ok := c.Resources.Limits[resource]; ok {
		return q.Value()
	}
	return 0
}

// RequestedByNode sums what every non-terminal pod occupying a node requests
// of resource, keyed by node name.
func RequestedByNode(pods []corev1.Pod, resource corev1.ResourceName) map[string]int64 {
	used := map[string]int64{}
	for i := range pods {
		p := &pods[i]
		if Terminal(p) {
			continue
		}
		if n := PodNode(p); n != "" {
			if r := PodRequest(p, resource); r > 0 {
				used[n] += r
			}
		}
	}
	return used
}
