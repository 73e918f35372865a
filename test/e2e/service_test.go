package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/localcluster/clusterconfig"
	"github.com/mla-operator/mla-operator/internal/localcluster/livetable"
	"github.com/mla-operator/mla-operator/test/builders"
)

// liteService is a DeepSeek-V2-Lite service kept to one node pool, so that
// tests running side by side do not share nodes.
func liteService(ns, name, pool string, replicas int32) *builders.MLAServiceBuilder {
	b := builders.MLAService(ns, name).Preset(v1alpha1.PresetDeepSeekV2Lite).ModelName("deepseek-ai/DeepSeek-V2-Lite-Chat").
		Context(32768).Replicas(replicas).WorkerArgs(fastReportArgs...)
	if pool != "" {
		b = b.NodeSelector(clusterconfig.LabelPool, pool)
	}
	return b
}

// 1. A sample applies and becomes Ready; each worker's capacity in status
// matches the capacity model for the GPU it landed on.
func TestSampleBecomesReadyWithModelCapacity(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	raw, err := os.ReadFile(filepath.Join(root, "config", "samples", "deepseek-v2-lite.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var sample v1alpha1.MLAService
	if err := yaml.Unmarshal(raw, &sample); err != nil {
		t.Fatal(err)
	}
	// The sample as written, only with reports often enough for a test.
	patched, err := withWorkerArgs(raw, fastReportArgs)
	if err != nil {
		t.Fatal(err)
	}
	mustKubectl(t, patched, "apply", "-n", ns, "-f", "-")
	svc := readyWith(t, ns, sample.Name, *sample.Spec.Replicas, 3*time.Minute)
	checkCapacity(t, svc)
	if c := apimeta.FindStatusCondition(svc.Status.Conditions, v1alpha1.ConditionContextLimitFeasible); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("ContextLimitFeasible = %+v, want True", c)
	}
	if svc.Status.MaxContextLength < svc.Spec.ContextLength {
		t.Errorf("max context %d below the context length %d of a Ready service", svc.Status.MaxContextLength, svc.Spec.ContextLength)
	}
	// kubectl's printer columns show the same.
	out := mustKubectl(t, nil, "-n", ns, "get", "mlaservice", sample.Name, "--no-headers")
	if f := strings.Fields(out); len(f) < 4 || f[1] != "True" || f[2] != fmt.Sprint(*sample.Spec.Replicas) || f[3] != fmt.Sprint(svc.Status.KVCache.CapacityTokens) {
		t.Errorf("kubectl get shows %q", out)
	}
}

// withWorkerArgs adds args to spec.worker.args of a manifest.
func withWorkerArgs(manifest []byte, args []string) ([]byte, error) {
	var obj map[string]any
	if err := yaml.Unmarshal(manifest, &obj); err != nil {
		return nil, err
	}
	if len(args) == 0 {
		return json.Marshal(obj)
	}
	spec := obj["spec"].(map[string]any)
	w, _ := spec["worker"].(map[string]any)
	if w == nil {
		w = map[string]any{}
	}
	w["args"] = args
	spec["worker"] = w
	return json.Marshal(obj)
}

// 2. An infeasible context is reported, with a clear message, and places
// nothing that could crash-loop.
func TestInfeasibleContextIsReported(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	cases := []struct {
		name string
		svc  *v1alpha1.MLAService
		// words the message must contain
		want []string
	}{
		{
			// V2-Lite's 31 GB of weights do not fit a 22.5 GiB L4.
			name: "lite-on-l4",
			svc:  liteService(ns, "lite-on-l4", "l4", 1).Obj(),
			want: []string{"NVIDIA-L4"},
		},
		{
			// 689 GB of weights over 4 GPUs is 172 GB a GPU: more than any.
			name: "v3-on-4-gpus",
			svc: builders.MLAService(ns, "v3-on-4-gpus").Preset(v1alpha1.PresetDeepSeekV3).ModelName("deepseek-ai/DeepSeek-V3").
				Context(163840).GPUs(4).Replicas(1).Obj(),
			want: []string{"163840"},
		},
	}
	for _, tc := range cases {
		apply(t, manifest(tc.svc))
	}
	for _, tc := range cases {
		eventually(t, time.Minute, tc.name+" infeasible", func() error {
			svc := getService(t, ns, tc.name)
			if err := conditionIs(svc, v1alpha1.ConditionContextLimitFeasible, metav1.ConditionFalse); err != nil {
				return err
			}
			c := apimeta.FindStatusCondition(svc.Status.Conditions, v1alpha1.ConditionContextLimitFeasible)
			for _, w := range tc.want {
				if !strings.Contains(c.Message, w) {
					return fmt.Errorf("message %q does not mention %q", c.Message, w)
				}
			}
			if ready := apimeta.FindStatusCondition(svc.Status.Conditions, v1alpha1.ConditionReady); ready != nil && ready.Status == metav1.ConditionTrue {
				return fmt.Errorf("an infeasible service is Ready")
			}
			return nil
		})
	}
	// Nothing crash-loops: no worker runs, or none restarts, for a while.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, tc := range cases {
			for _, p := range workers(t, ns, tc.name) {
				for _, cs := range p.Status.ContainerStatuses {
					if cs.RestartCount > 0 || cs.State.Terminated != nil {
						t.Fatalf("worker %s of infeasible service %s restarted %d times (%+v)", p.Name, tc.name, cs.RestartCount, cs.State)
					}
				}
			}
		}
		time.Sleep(time.Second)
	}
}

// 3. Changing contextLength rolls the workers one at a time and capacity
// follows.
func TestContextLengthChangeRollsOneAtATime(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	const replicas = 2
	apply(t, manifest(liteService(ns, "roll", "h100", replicas).Obj()))
	before := readyWith(t, ns, "roll", replicas, 3*time.Minute)
	checkCapacity(t, before)
	oldRevision := map[string]bool{}
	for _, p := range workers(t, ns, "roll") {
		oldRevision[p.Labels[v1alpha1.LabelRevision]] = true
	}

	for _, context := range []int64{65536, 8192} {
		mustKubectl(t, nil, "-n", ns, "patch", "mlaservice", "roll", "--type=merge", "-p", fmt.Sprintf(`{"spec":{"contextLength":%d}}`, context))
		var after *v1alpha1.MLAService
		minReady := int32(replicas)
		eventually(t, 3*time.Minute, fmt.Sprintf("rollout to contextLength %d", context), func() error {
			svc := getService(t, ns, "roll")
			// One at a time: never more than maxUnavailable (1) down.
			minReady = min(minReady, svc.Status.ReadyReplicas)
			if svc.Status.ReadyReplicas < replicas-1 {
				t.Fatalf("%d of %d workers ready during the rollout: more than one down at once", svc.Status.ReadyReplicas, replicas)
			}
			if len(workers(t, ns, "roll")) > replicas {
				t.Fatalf("more than %d workers during a rollout with maxSurge 0", replicas)
			}
			if err := conditionIs(svc, v1alpha1.ConditionReady, metav1.ConditionTrue); err != nil {
				return err
			}
			if svc.Status.UpdatedReplicas != replicas || svc.Status.ReadyReplicas != replicas {
				return fmt.Errorf("%d updated, %d ready of %d", svc.Status.UpdatedReplicas, svc.Status.ReadyReplicas, replicas)
			}
			for _, p := range workers(t, ns, "roll") {
				if oldRevision[p.Labels[v1alpha1.LabelRevision]] {
					return fmt.Errorf("worker %s still on an old revision", p.Name)
				}
				if got := envValue(p, v1alpha1.EnvContextLength); got != fmt.Sprint(context) {
					return fmt.Errorf("worker %s runs with %s=%s", p.Name, v1alpha1.EnvContextLength, got)
				}
			}
			after = svc
			return nil
		})
		if minReady != replicas-1 {
			t.Errorf("the rollout never took a worker down (min ready %d): were workers rolled?", minReady)
		}
		checkCapacity(t, after)
		for _, p := range workers(t, ns, "roll") {
			oldRevision[p.Labels[v1alpha1.LabelRevision]] = true
		}
	}
}

func envValue(p corev1.Pod, name string) string {
	for _, c := range p.Spec.Containers {
		for _, e := range c.Env {
			if e.Name == name {
				return e.Value
			}
		}
	}
	return ""
}

// 7. kubectl scale drives replicas when autoscaling is off.
func TestKubectlScale(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	apply(t, manifest(liteService(ns, "scaled", "h200", 1).Obj()))
	readyWith(t, ns, "scaled", 1, 3*time.Minute)
	for _, n := range []int32{3, 1} {
		mustKubectl(t, nil, "-n", ns, "scale", "mlaservice/scaled", fmt.Sprintf("--replicas=%d", n))
		svc := readyWith(t, ns, "scaled", n, 3*time.Minute)
		checkCapacity(t, svc)
		eventually(t, time.Minute, "worker pods follow", func() error {
			if got := len(workers(t, ns, "scaled")); got != int(n) {
				return fmt.Errorf("%d worker pods, want %d", got, n)
			}
			return nil
		})
	}
	out := mustKubectl(t, nil, "-n", ns, "get", "mlaservice", "scaled", "-o", "jsonpath={.status.selector}")
	if !strings.Contains(out, v1alpha1.LabelService+"=scaled") {
		t.Errorf("status.selector %q does not select the service's workers", out)
	}
}

// 8. Deleting the service removes every worker pod, and the harness's table
// shows it.
func TestDeletingTheServiceRemovesEveryPod(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	apply(t, manifest(liteService(ns, "doomed", "h200", 2).Obj()))
	readyWith(t, ns, "doomed", 2, 3*time.Minute)
	if table := drawTable(t); !strings.Contains(table, "doomed") {
		t.Fatalf("the live table does not show the service:\n%s", table)
	}
	pods := workers(t, ns, "doomed")
	mustKubectl(t, nil, "-n", ns, "delete", "mlaservice", "doomed", "--wait=true", "--timeout=2m")
	eventually(t, 2*time.Minute, "every worker pod gone", func() error {
		var all corev1.PodList
		if err := k8s.List(context.Background(), &all); err != nil {
			return err
		}
		for _, p := range all.Items {
			if p.Namespace == ns {
				return fmt.Errorf("pod %s still exists (phase %s)", p.Name, p.Status.Phase)
			}
		}
		return nil
	})
	for _, p := range pods {
		if _, err := os.Stat(cluster.WorkerLogPath(ns, p.Name)); err != nil {
			t.Errorf("worker %s never ran: %v", p.Name, err)
		}
	}
	table := drawTable(t)
	for _, p := range pods {
		if strings.Contains(table, p.Name) {
			t.Errorf("the live table still shows worker %s:\n%s", p.Name, table)
		}
	}
	if strings.Contains(table, " doomed ") {
		t.Errorf("the live table still shows the service:\n%s", table)
	}
}

func drawTable(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	if err := livetable.Draw(context.Background(), k8s, &b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// manifest is obj as JSON without its status, for kubectl apply.
func manifest(obj any) map[string]any {
	raw, err := json.Marshal(obj)
	if err != nil {
		panic(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		panic(err)
	}
	delete(m, "status")
	if md, ok := m["metadata"].(map[string]any); ok {
		delete(md, "creationTimestamp")
	}
	return m
}
