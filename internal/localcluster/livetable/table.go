// Package livetable renders the local cluster's state for a person watching
// `make run`: services, workers, nodes, GPU capacity and KV-cache
// utilization, from what the API holds (service status, worker pods and
// their reports, nodes).
package livetable

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// Snapshot is what one refresh shows.
type Snapshot struct {
	Services []v1alpha1.MLAService
	// Workers are the worker pods (app.kubernetes.io/component=worker).
	Workers []corev1.Pod
	Nodes   []corev1.Node
	Now     time.Time
}

// Render writes the snapshot as four aligned tables.
func Render(w io.Writer, s Snapshot) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "SERVICES (%d)\n", len(s.Services))
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tREADY\tWORKERS\tKV CAPACITY\tKV USED\tUTIL\tCONTEXT\tMAX CONTEXT\tSTATUS")
	services := append([]v1alpha1.MLAService(nil), s.Services...)
	sort.Slice(services, func(i, j int) bool {
		return key(services[i].Namespace, services[i].Name) < key(services[j].Namespace, services[j].Name)
	})
	for _, svc := range services {
		desired := "-"
		if svc.Spec.Replicas != nil {
			desired = strconv.Itoa(int(*svc.Spec.Replicas))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			svc.Namespace, svc.Name, conditionStatus(svc, v1alpha1.ConditionReady),
			svc.Status.ReadyReplicas, desired,
			Tokens(svc.Status.KVCache.CapacityTokens), Tokens(svc.Status.KVCache.UsedTokens),
			Percent(svc.Status.KVCache.Utilization),
			Tokens(svc.Spec.ContextLength), Tokens(svc.Status.MaxContextLength),
			serviceNote(svc))
	}

	fmt.Fprintf(tw, "\nWORKERS (%d)\n", len(s.Workers))
	fmt.Fprintln(tw, "SERVICE\tPOD\tNODE\tGPU\tPHASE\tREADY\tRESTARTS\tIP\tKV CAPACITY\tKV USED\tUTIL\tSEQS\tREPORT")
	workers := append([]corev1.Pod(nil), s.Workers...)
	sort.Slice(workers, func(i, j int) bool {
		a, b := workers[i], workers[j]
		return key(a.Namespace, a.Labels[v1alpha1.LabelService], a.Name) < key(b.Namespace, b.Labels[v1alpha1.LabelService], b.Name)
	})
	nodeGPU := map[string]string{}
	for _, n := range s.Nodes {
		nodeGPU[n.Name] = n.Labels[v1alpha1.LabelGPUProduct]
	}
	for _, p := range workers {
		r, hasReport := report(p)
		capacity, used, util, seqs, age := "-", "-", "-", "-", "none"
		if hasReport {
			capacity, used, seqs = Tokens(r.CapacityTokens), Tokens(r.UsedTokens), strconv.Itoa(int(r.ActiveSequences))
			if r.CapacityTokens > 0 {
				util = Percent(float64(r.UsedTokens) / float64(r.CapacityTokens))
			}
			age = Age(s.Now.Sub(r.Time.Time)) + " ago"
			if r.Draining {
				age += " draining"
			}
			if r.Error != "" {
				age += " error: " + Truncate(r.Error, 60)
			}
		}
		node := p.Spec.NodeName
		if node == "" {
			node = "<pending>"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n",
			p.Labels[v1alpha1.LabelService], p.Name, node, ShortGPU(nodeGPU[p.Spec.NodeName]),
			podPhase(p), yesNo(podReady(p)), restarts(p), orDash(p.Status.PodIP),
			capacity, used, util, seqs, age)
	}

	fmt.Fprintf(tw, "\nNODES (%d)\n", len(s.Nodes))
	fmt.Fprintln(tw, "NAME\tGPU\tMEMORY\tZONE\tREADY\tGPUS USED\tWORKERS")
	used := gpusInUse(s.Workers)
	workersOn := map[string]int{}
	for _, p := range s.Workers {
		if p.Spec.NodeName != "" && p.DeletionTimestamp == nil {
			workersOn[p.Spec.NodeName]++
		}
	}
	nodes := append([]corev1.Node(nil), s.Nodes...)
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	type pool struct{ nodes, gpus, used int64 }
	pools := map[string]*pool{}
	for _, n := range nodes {
		product := n.Labels[v1alpha1.LabelGPUProduct]
		alloc := n.Status.Allocatable[v1alpha1.DefaultGPUResource]
		mem := "-"
		if mib, err := strconv.ParseInt(n.Labels[v1alpha1.LabelGPUMemoryMiB], 10, 64); err == nil {
			mem = fmt.Sprintf("%.0f GiB", float64(mib)/1024)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%d\n", n.Name, ShortGPU(product), mem,
			orDash(n.Labels[corev1.LabelTopologyZone]), yesNo(nodeReady(n)), used[n.Name], alloc.Value(), workersOn[n.Name])
		if pools[product] == nil {
			pools[product] = &pool{}
		}
		pools[product].nodes++
		pools[product].gpus += alloc.Value()
		pools[product].used += used[n.Name]
	}

	fmt.Fprintln(tw, "\nCAPACITY")
	fmt.Fprintln(tw, "GPU\tNODES\tGPUS\tIN USE\tUTIL")
	products := make([]string, 0, len(pools))
	for p := range pools {
		products = append(products, p)
	}
	sort.Strings(products)
	var total pool
	for _, product := range products {
		p := pools[product]
		total.nodes, total.gpus, total.used = total.nodes+p.nodes, total.gpus+p.gpus, total.used+p.used
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", ShortGPU(product), p.nodes, p.gpus, p.used, Percent(ratio(p.used, p.gpus)))
	}
	fmt.Fprintf(tw, "total\t%d\t%d\t%d\t%s\n", total.nodes, total.gpus, total.used, Percent(ratio(total.used, total.gpus)))
	return tw.Flush()
}

func key(parts ...string) string { return strings.Join(parts, "\x00") }

func ratio(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func conditionStatus(svc v1alpha1.MLAService, t string) string {
	if c := apimeta.FindStatusCondition(svc.Status.Conditions, t); c != nil {
		return string(c.Status)
	}
	return "-"
}

// serviceNote is the one thing a person should know about a service: the
// message of a False ContextLimitFeasible or a True Degraded condition,
// else Progressing's reason.
func serviceNote(svc v1alpha1.MLAService) string {
	conds := svc.Status.Conditions
	if c := apimeta.FindStatusCondition(conds, v1alpha1.ConditionContextLimitFeasible); c != nil && c.Status == "False" {
		return c.Reason + ": " + Truncate(c.Message, 90)
	}
	if c := apimeta.FindStatusCondition(conds, v1alpha1.ConditionDegraded); c != nil && c.Status == "True" {
		return c.Reason + ": " + Truncate(c.Message, 90)
	}
	if c := apimeta.FindStatusCondition(conds, v1alpha1.ConditionProgressing); c != nil && c.Status == "True" {
		return c.Reason
	}
	if c := apimeta.FindStatusCondition(conds, v1alpha1.ConditionReady); c != nil {
		return c.Reason
	}
	return "waiting for the operator"
}

func report(p corev1.Pod) (v1alpha1.Report, bool) {
	raw, ok := p.Annotations[v1alpha1.AnnotationReport]
	if !ok {
		return v1alpha1.Report{}, false
	}
	var r v1alpha1.Report
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return v1alpha1.Report{}, false
	}
	return r, true
}

func podPhase(p corev1.Pod) string {
	if p.DeletionTimestamp != nil {
		return "Terminating"
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Waiting != nil && cs.State.Waiting.Reason != "" {
			return cs.State.Waiting.Reason
		}
	}
	if p.Status.Phase == "" {
		return string(corev1.PodPending)
	}
	return string(p.Status.Phase)
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func nodeReady(n corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func restarts(p corev1.Pod) int32 {
	var n int32
	for _, cs := range p.Status.ContainerStatuses {
		n += cs.RestartCount
	}
	return n
}

// gpusInUse sums the GPU limits of pods bound to each node that still hold
// them (not finished).
func gpusInUse(pods []corev1.Pod) map[string]int64 {
	used := map[string]int64{}
	for _, p := range pods {
		if p.Spec.NodeName == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, c := range p.Spec.Containers {
			q := c.Resources.Limits[v1alpha1.DefaultGPUResource]
			if q.IsZero() {
				q = c.Resources.Requests[v1alpha1.DefaultGPUResource]
			}
			used[p.Spec.NodeName] += q.Value()
		}
	}
	return used
}

// Tokens formats a token count compactly: 812, 12.3K, 1.41M.
func Tokens(n int64) string {
	switch {
	case n == 0:
		return "0"
	case n < 10_000:
		return strconv.FormatInt(n, 10)
	case n < 1_000_000:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	default:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	}
}

// Percent formats a fraction as a percentage.
func Percent(f float64) string { return fmt.Sprintf("%.0f%%", f*100) }

// Age formats a duration the way kubectl does, coarsely.
func Age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	default:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
}

// ShortGPU drops the vendor prefix: NVIDIA-H100-80GB-HBM3 -> H100-80GB-HBM3.
func ShortGPU(product string) string {
	if product == "" {
		return "-"
	}
	return strings.TrimPrefix(product, "NVIDIA-")
}

// Truncate shortens s to n runes with an ellipsis.
func Truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
