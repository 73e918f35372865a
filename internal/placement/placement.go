// Package placement decides where an MLAService's workers go. It is a pure
// function of the cluster (nodes and every pod), the service and its
// capacity configuration: no client, no clock. The capacity model decides
// whether one sequence of the service's context length fits a node's GPUs;
// the strategy chooses among the nodes where it does.
package placement

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/klog/v2"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/capacity"
	"github.com/mla-operator/mla-operator/internal/nodeinfo"
)

// Request is everything a placement depends on.
type Request struct {
	Service *v1alpha1.MLAService
	// Config is capacity.FromSpec(&Service.Spec).
	Config capacity.Config
	Nodes  []corev1.Node
	// Pods is every pod in the cluster: all of them use GPUs, not only the
	// service's workers.
	Pods []corev1.Pod
	// Count is how many new workers to place.
	Count int
}

// Assignment is one new worker's node.
type Assignment struct {
	Node     string
	Zone     string
	GPU      nodeinfo.GPU
	Estimate capacity.Estimate
}

// Rejection says why a node cannot take a worker of the service.
type Rejection struct {
	Node   string
	Reason string
}

// Result is a placement decision.
type Result struct {
	// Assignments are the nodes of the new workers, in placement order.
	Assignments []Assignment
	// Unplaced is how many of the requested workers found no node.
	Unplaced int
	// Rejected lists the nodes that cannot take a worker now, by name.
	Rejected []Rejection
	// Products says, per GPU product on eligible nodes, what one worker
	// holds there; eligible means Ready, schedulable, tolerated, selected
	// and of sufficient compute capability, whatever its free GPUs.
	Products []v1alpha1.GPUProductCapacity
	// ContextErrors holds, per product where one sequence of the context
	// length does not fit, the capacity model's explanation.
	ContextErrors []*capacity.ContextError
}

// Feasible reports whether one sequence of the context length fits on at
// least one eligible GPU product.
func (r Result) Feasible() bool {
	for _, p := range r.Products {
		if p.Feasible {
			return true
		}
	}
	return false
}

// candidate is a node where a worker fits, with the state placement updates
// as it assigns workers.
type candidate struct {
	name     string
	zone     string
	gpu      nodeinfo.GPU
	estimate capacity.Estimate
	alloc    int64 // allocatable GPUs
	free     int64 // allocatable minus every non-terminal pod's request
	workers  int   // this service's workers on the node
}

// Place assigns req.Count new workers to nodes.
func Place(req Request) Result {
	spec := &req.Service.Spec
	resource := corev1.ResourceName(cmp.Or(spec.Placement.GPUResourceName, v1alpha1.DefaultGPUResource))
	gpusPerWorker := int64(max(req.Config.GPUs, 1))
	requested := nodeinfo.RequestedByNode(req.Pods, resource)
	workers := WorkersByNode(req.Service, req.Pods)

	var minCC *nodeinfo.ComputeCapability
	var res Result
	if s := spec.Placement.MinComputeCapability; s != "" {
		cc, err := nodeinfo.ParseComputeCapability(s)
		if err != nil {
			// The CRD's pattern makes this unreachable through the API.
			for i := range req.Nodes {
				res.Rejected = append(res.Rejected, Rejection{req.Nodes[i].Name, err.Error()})
			}
			res.Unplaced = req.Count
			return res
		}
		minCC = &cc
	}
	selector := labels.SelectorFromSet(spec.Placement.NodeSelector)

	type productKey struct {
		product string
		mib     int64
	}
	estimates := map[productKey]capacity.Estimate{}
	products := map[string]*v1alpha1.GPUProductCapacity{}
	var cands []*candidate

	nodes := sortedByName(req.Nodes)
	for _, node := range nodes {
		reject := func(format string, args ...any) {
			res.Rejected = append(res.Rejected, Rejection{node.Name, fmt.Sprintf(format, args...)})
		}
		gpu, err := nodeinfo.GPUOf(node)
		switch {
		case err != nil:
			reject("not a GPU node: %v", err)
			continue
		case node.Spec.Unschedulable:
			reject("unschedulable (cordoned)")
			continue
		case !nodeinfo.Ready(node):
			reject("not Ready")
			continue
		case !selector.Matches(labels.Set(node.Labels)):
			reject("does not match spec.placement.nodeSelector")
			continue
		case minCC != nil && !gpu.AtLeast(*minCC):
			reject("%s has compute capability %d.%d, below spec.placement.minComputeCapability %s",
				gpu.Product, gpu.ComputeMajor, gpu.ComputeMinor, spec.Placement.MinComputeCapability)
			continue
		}
		if taint, ok := untoleratedTaint(node, spec.Placement.Tolerations); ok {
			reject("taint %s not tolerated", taint.ToString())
			continue
		}

		key := productKey{gpu.Product, gpu.MemoryMiB}
		est, seen := estimates[key]
		if !seen {
			est = req.Config.Estimate(capacity.GPU{Product: gpu.Product, MemoryBytes: gpu.MemoryMiB * capacity.MiB})
			estimates[key] = est
		}
		ctxErr := req.Config.CheckContext(est, spec.ContextLength)
		p := products[gpu.Product]
		if p == nil {
			p = &v1alpha1.GPUProductCapacity{Product: gpu.Product, MemoryMiB: gpu.MemoryMiB,
				TokensPerWorker: est.Tokens, MaxContextLength: est.MaxContextLength(), Feasible: ctxErr == nil}
			if ce := (*capacity.ContextError)(nil); errors.As(ctxErr, &ce) {
				p.Message = ce.Error()
				res.ContextErrors = append(res.ContextErrors, ce)
			}
			products[gpu.Product] = p
		}
		p.Nodes++
		if ctxErr != nil {
			reject("one sequence of %d tokens does not fit a worker on %s (at most %d tokens)",
				spec.ContextLength, gpu.Product, est.MaxContextLength())
			continue
		}
		alloc := nodeinfo.Allocatable(node, resource)
		free := alloc - requested[node.Name]
		if free < gpusPerWorker {
			reject("%d of %d %s free, a worker needs %d", max(free, 0), alloc, resource, gpusPerWorker)
			continue
		}
		cands = append(cands, &candidate{name: node.Name, zone: node.Labels[corev1.LabelTopologyZone], gpu: gpu,
			estimate: est, alloc: alloc, free: free, workers: workers[node.Name]})
	}

	for _, p := range products {
		res.Products = append(res.Products, *p)
	}
	slices.SortFunc(res.Products, func(a, b v1alpha1.GPUProductCapacity) int {
		return cmp.Or(cmp.Compare(b.TokensPerWorker, a.TokensPerWorker), strings.Compare(a.Product, b.Product))
	})
	slices.SortFunc(res.ContextErrors, func(a, b *capacity.ContextError) int {
		return cmp.Or(cmp.Compare(b.MaxContext, a.MaxContext), strings.Compare(a.GPUProduct, b.GPUProduct))
	})

	zoneWorkers := map[string]int{}
	for _, c := range cands {
		zoneWorkers[c.zone] += c.workers
	}
	better := less(cmp.Or(spec.Placement.Strategy, v1alpha1.MostCapacity), zoneWorkers)
	for range req.Count {
		var best *candidate
		for _, c := range cands {
			if c.free >= gpusPerWorker && (best == nil || better(c, best)) {
				best = c
			}
		}
		if best == nil {
			res.Unplaced++
			continue
		}
		best.free -= gpusPerWorker
		best.workers++
		zoneWorkers[best.zone]++
		res.Assignments = append(res.Assignments, Assignment{Node: best.name, Zone: best.zone, GPU: best.gpu, Estimate: best.estimate})
	}
	return res
}

// less returns the strategy's order: whether a is a better node than b for
// the next worker. Every order ends with the node name, so equal nodes are
// chosen the same way every time.
func less(strategy v1alpha1.PlacementStrategy, zoneWorkers map[string]int) func(a, b *candidate) bool {
	byName := func(a, b *candidate) int { return strings.Compare(a.name, b.name) }
	byTokens := func(a, b *candidate) int { return cmp.Compare(b.estimate.Tokens, a.estimate.Tokens) }
	switch strategy {
	case v1alpha1.BinPack:
		// Nodes already in use first (whole nodes stay free), then the
		// fullest, then the most capacity.
		return func(a, b *candidate) bool {
			return cmp.Or(
				cmp.Compare(boolRank(a.free == a.alloc), boolRank(b.free == b.alloc)),
				cmp.Compare(a.free, b.free),
				byTokens(a, b), byName(a, b)) < 0
		}
	case v1alpha1.Spread:
		// Fewest of the service's workers on the node, then in its zone;
		// capacity decides among equals.
		return func(a, b *candidate) bool {
			return cmp.Or(
				cmp.Compare(a.workers, b.workers),
				cmp.Compare(zoneWorkers[a.zone], zoneWorkers[b.zone]),
				byTokens(a, b), byName(a, b)) < 0
		}
	default: // MostCapacity
		// The most tokens per worker; among equal GPUs, the node with fewer
		// of the service's workers so one node's loss costs less.
		return func(a, b *candidate) bool {
			return cmp.Or(
				byTokens(a, b),
				cmp.Compare(a.workers, b.workers),
				cmp.Compare(b.free, a.free),
				byName(a, b)) < 0
		}
	}
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// untoleratedTaint returns the first NoSchedule or NoExecute taint of node
// that tolerations do not tolerate, as the scheduler's TaintToleration
// filter decides it.
func untoleratedTaint(node *corev1.Node, tolerations []corev1.Toleration) (corev1.Taint, bool) {
	return corev1helpers.FindMatchingUntoleratedTaint(klog.Background(), node.Spec.Taints, tolerations,
		func(t *corev1.Taint) bool {
			return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
		}, false)
}

// WorkersByNode counts the service's live workers (not terminal, not being
// deleted) per node.
func WorkersByNode(svc *v1alpha1.MLAService, pods []corev1.Pod) map[string]int {
	out := map[string]int{}
	for i := range pods {
		p := &pods[i]
		if p.Namespace != svc.Namespace || p.Labels[v1alpha1.LabelService] != svc.Name ||
			p.DeletionTimestamp != nil || nodeinfo.Terminal(p) {
			continue
		}
		if n := nodeinfo.PodNode(p); n != "" {
			out[n]++
		}
	}
	return out
}

func sortedByName(nodes []corev1.Node) []*corev1.Node {
	out := make([]*corev1.Node, len(nodes))
	for i := range nodes {
		out[i] = &nodes[i]
	}
	slices.SortFunc(out, func(a, b *corev1.Node) int { return strings.Compare(a.Name, b.Name) })
	return out
}
