// Package clusterconfig reads the node inventory of the local simulated GPU
// cluster: pools of identical kwok nodes, each labelled the way NVIDIA GPU
// Feature Discovery labels a real GPU node, and turns it into Node objects.
package clusterconfig

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/config/local"
)

// Label and annotation keys the local cluster puts on its nodes.
const (
	// LabelSimulated marks nodes of the local cluster; kwok manages them.
	LabelSimulated = "mla.dev/simulated-node"
	// LabelPool names the pool a node was made from.
	LabelPool = "mla.dev/pool"
	// KwokNodeAnnotation is the annotation kwok's default deployment selects
	// nodes by; set so that a stock kwok would manage these nodes too.
	KwokNodeAnnotation = "kwok.x-k8s.io/node"
)

// Cluster is a node inventory.
type Cluster struct {
	Pools []Pool `json:"pools"`
}

// Pool is count identical nodes named <name>-0 ... <name>-(count-1).
type Pool struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
	// Zone is the topology.kubernetes.io/zone label.
	Zone string `json:"zone,omitempty"`
	GPU  GPU    `json:"gpu"`
	// Labels are added to every node of the pool.
	Labels map[string]string `json:"labels,omitempty"`
	// Taints are put on every node of the pool.
	Taints []corev1.Taint `json:"taints,omitempty"`
}

// GPU describes the GPUs of one node.
type GPU struct {
	// Product is the nvidia.com/gpu.product label, e.g. NVIDIA-H200.
	Product string `json:"product"`
	// MemoryMiB is the memory of one GPU (nvidia.com/gpu.memory).
	MemoryMiB int64 `json:"memoryMiB"`
	// Count is the GPUs per node (nvidia.com/gpu.count and allocatable
	// nvidia.com/gpu).
	Count int `json:"count"`
	// ComputeCapability is "major.minor", e.g. "9.0".
	ComputeCapability string `json:"computeCapability"`
}

var computeCapability = regexp.MustCompile(`^([0-9]+)\.([0-9]+)$`)

// Parse reads an inventory and validates it.
func Parse(data []byte) (*Cluster, error) {
	var c Cluster
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return nil, fmt.Errorf("parsing cluster file: %w", err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Load reads an inventory from path.
func Load(path string) (*Cluster, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading cluster file: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Default is the inventory of config/local/cluster.yaml.
func Default() *Cluster {
	c, err := Parse(local.ClusterYAML)
	if err != nil {
		panic(fmt.Sprintf("embedded default cluster file is invalid: %v", err))
	}
	return c
}

// Validate reports the first problem of the inventory.
func (c *Cluster) Validate() error {
	if len(c.Pools) == 0 {
		return fmt.Errorf("cluster has no node pools")
	}
	seen := map[string]bool{}
	for i, p := range c.Pools {
		where := fmt.Sprintf("pools[%d] (%s)", i, p.Name)
		if errs := validation.IsDNS1123Label(p.Name); len(errs) > 0 {
			return fmt.Errorf("%s: name: %s", where, strings.Join(errs, "; "))
		}
		if seen[p.Name] {
			return fmt.Errorf("%s: duplicate pool name", where)
		}
		seen[p.Name] = true
		switch {
		case p.Count < 0:
			return fmt.Errorf("%s: count must not be negative, got %d", where, p.Count)
		case p.GPU.Product == "":
			return fmt.Errorf("%s: gpu.product is required", where)
		case len(validation.IsValidLabelValue(p.GPU.Product)) > 0:
			return fmt.Errorf("%s: gpu.product %q is not a valid label value", where, p.GPU.Product)
		case p.GPU.MemoryMiB <= 0:
			return fmt.Errorf("%s: gpu.memoryMiB must be positive, got %d", where, p.GPU.MemoryMiB)
		case p.GPU.Count <= 0:
			return fmt.Errorf("%s: gpu.count must be positive, got %d", where, p.GPU.Count)
		case !computeCapability.MatchString(p.GPU.ComputeCapability):
			return fmt.Errorf("%s: gpu.computeCapability must look like \"9.0\", got %q", where, p.GPU.ComputeCapability)
		}
		for k, v := range p.Labels {
			if errs := validation.IsQualifiedName(k); len(errs) > 0 {
				return fmt.Errorf("%s: label key %q: %s", where, k, strings.Join(errs, "; "))
			}
			if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
				return fmt.Errorf("%s: label %s value %q: %s", where, k, v, strings.Join(errs, "; "))
			}
		}
	}
	return nil
}

// NodeCount is the number of nodes of all pools.
func (c *Cluster) NodeCount() int {
	n := 0
	for _, p := range c.Pools {
		n += p.Count
	}
	return n
}

// Nodes builds the Node objects of the inventory, with status (capacity,
// allocatable) filled in: the apiserver accepts a node's status on create, as
// a kubelet registering itself sends it. podCIDRs give node i (counting from
// 0 across pools) its own /24 of loopback addresses for worker pods.
func (c *Cluster) Nodes(podCIDRs PodCIDRs) ([]*corev1.Node, error) {
	var nodes []*corev1.Node
	i := 0
	for _, p := range c.Pools {
		for j := range p.Count {
			cidr, err := podCIDRs.ForNode(i)
			if err != nil {
				return nil, err
			}
			nodes = append(nodes, p.node(fmt.Sprintf("%s-%d", p.Name, j), cidr))
			i++
		}
	}
	return nodes, nil
}

func (p Pool) node(name string, podCIDR netip.Prefix) *corev1.Node {
	m := computeCapability.FindStringSubmatch(p.GPU.ComputeCapability)
	labels := map[string]string{
		corev1.LabelHostname:          name,
		corev1.LabelOSStable:          "linux",
		corev1.LabelArchStable:        "amd64",
		"type":                        "kwok",
		LabelSimulated:                "true",
		LabelPool:                     p.Name,
		v1alpha1.LabelGPUProduct:      p.GPU.Product,
		v1alpha1.LabelGPUMemoryMiB:    strconv.FormatInt(p.GPU.MemoryMiB, 10),
		v1alpha1.LabelGPUCount:        strconv.Itoa(p.GPU.Count),
		v1alpha1.LabelGPUComputeMajor: m[1],
		v1alpha1.LabelGPUComputeMinor: m[2],
	}
	if p.Zone != "" {
		labels[corev1.LabelTopologyZone] = p.Zone
	}
	for k, v := range p.Labels {
		labels[k] = v
	}
	resources := corev1.ResourceList{
		corev1.ResourceCPU:          resource.MustParse("192"),
		corev1.ResourceMemory:       resource.MustParse("2Ti"),
		corev1.ResourcePods:         resource.MustParse("110"),
		v1alpha1.DefaultGPUResource: *resource.NewQuantity(int64(p.GPU.Count), resource.DecimalSI),
	}
	return &corev1.Node{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      labels,
			Annotations: map[string]string{KwokNodeAnnotation: "fake"},
		},
		Spec: corev1.NodeSpec{
			PodCIDR:  podCIDR.String(),
			PodCIDRs: []string{podCIDR.String()},
			Taints:   append([]corev1.Taint(nil), p.Taints...),
		},
		Status: corev1.NodeStatus{
			Capacity:    resources,
			Allocatable: resources.DeepCopy(),
		},
	}
}

// GPUOf reads a node's simulated GPU back from its labels: what the process
// runtime hands a worker as MLA_SIMULATED_GPU.
func GPUOf(node *corev1.Node) (product string, memoryMiB int64, err error) {
	product = node.Labels[v1alpha1.LabelGPUProduct]
	if product == "" {
		return "", 0, fmt.Errorf("node %s has no %s label", node.Name, v1alpha1.LabelGPUProduct)
	}
	memoryMiB, err = strconv.ParseInt(node.Labels[v1alpha1.LabelGPUMemoryMiB], 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("node %s: label %s: %w", node.Name, v1alpha1.LabelGPUMemoryMiB, err)
	}
	return product, memoryMiB, nil
}

// Marshal writes the inventory back as YAML.
func (c *Cluster) Marshal() ([]byte, error) {
	data, err := yaml.Marshal(c)
	if err != nil {
		return nil, err
	}
	return bytes.TrimSpace(data), nil
}
