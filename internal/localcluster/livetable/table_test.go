package livetable

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/test/builders"
)

// row finds the table row that starts with first and returns its cells.
func row(t *testing.T, out, first string) []string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		cells := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1)
		if len(cells) > 0 && cells[0] == first {
			return cells
		}
	}
	t.Fatalf("no row starting with %q in\n%s", first, out)
	return nil
}

// cellsOf returns the cells of the first row whose second cell is second.
func cellsOf(out, second string) []string {
	for _, line := range strings.Split(out, "\n") {
		cells := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1)
		if len(cells) > 1 && cells[1] == second {
			return cells
		}
	}
	return make([]string, 8)
}

func TestRender(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	svc := builders.MLAService("default", "lite").Preset(v1alpha1.PresetDeepSeekV2Lite).Context(32768).Replicas(2).Obj()
	svc.Status.ReadyReplicas = 1
	svc.Status.KVCache = v1alpha1.KVCacheStatus{CapacityTokens: 1_234_560, UsedTokens: 617_280, Utilization: 0.5}
	svc.Status.MaxContextLength = 1_234_560
	svc.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionReady, Status: "False", Reason: v1alpha1.ReasonWorkersNotReady}}
	infeasible := builders.MLAService("team", "v3").Preset(v1alpha1.PresetDeepSeekV3).Context(163840).Replicas(1).Obj()
	infeasible.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionContextLimitFeasible, Status: "False",
		Reason: v1alpha1.ReasonContextTooLong, Message: "no eligible GPU holds 163840 tokens"}}

	ready := builders.Pod("default", "lite-a").WorkerOf("lite").OnNode("h100-0").GPURequest(1).Running(true).
		Report(v1alpha1.Report{CapacityTokens: 617_280, UsedTokens: 308_640, ActiveSequences: 3, Time: metav1.NewTime(now.Add(-5 * time.Second))}).Obj()
	ready.Status.PodIP = "127.20.1.1"
	crashing := builders.Pod("default", "lite-b").WorkerOf("lite").OnNode("h100-0").GPURequest(1).Running(false).Obj()
	crashing.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "worker", RestartCount: 4,
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}}}
	pending := builders.Pod("default", "lite-c").WorkerOf("lite").GPURequest(1).Obj()

	nodes := []corev1.Node{
		*builders.GPUNode("h100-0", builders.H100, 8).Zone("zone-a").Obj(),
		*builders.GPUNode("l4-0", builders.L4, 4).Obj(),
	}
	var buf bytes.Buffer
	if err := Render(&buf, Snapshot{Services: []v1alpha1.MLAService{*infeasible, *svc}, Workers: []corev1.Pod{*pending, *crashing, *ready}, Nodes: nodes, Now: now}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()

	if got := row(t, out, "default"); strings.Join(got, "|") != "default|lite|False|1/2|1.23M|617.3K|50%|32.8K|1.23M|WorkersNotReady" {
		t.Errorf("service row = %q", got)
	}
	if got := row(t, out, "team"); !strings.Contains(got[len(got)-1], "ContextTooLong: no eligible GPU holds 163840 tokens") {
		t.Errorf("infeasible service row = %q", got)
	}
	if strings.Index(out, "default  ") > strings.Index(out, "team  ") {
		t.Error("services not sorted by namespace")
	}
	if got := row(t, out, "lite"); strings.Join(got, "|") != "lite|lite-a|h100-0|H100-80GB-HBM3|Running|yes|0|127.20.1.1|617.3K|308.6K|50%|3|5s ago" {
		t.Errorf("ready worker row = %q (rows are sorted; lite-a first)", got)
	}
	if got := cellsOf(out, "lite-b"); strings.Join(got[:7], "|") != "lite|lite-b|h100-0|H100-80GB-HBM3|CrashLoopBackOff|no|4" {
		t.Errorf("crashing worker row = %q", got)
	}
	if got := cellsOf(out, "lite-c"); got[2] != "<pending>" || got[4] != "Pending" {
		t.Errorf("pending worker row = %q", got)
	}
	if got := row(t, out, "h100-0"); strings.Join(got, "|") != "h100-0|H100-80GB-HBM3|80 GiB|zone-a|yes|2/8|2" {
		t.Errorf("node row = %q", got)
	}
	if got := row(t, out, "total"); strings.Join(got, "|") != "total|2|12|2|17%" {
		t.Errorf("total row = %q", got)
	}
}

func TestTokens(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 812: "812", 9999: "9999", 12_345: "12.3K", 1_410_000: "1.41M"} {
		if got := Tokens(n); got != want {
			t.Errorf("Tokens(%d) = %q, want %q", n, got, want)
		}
	}
}
