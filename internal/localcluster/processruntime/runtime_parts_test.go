package processruntime

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestShouldRestart(t *testing.T) {
	cases := []struct {
		policy corev1.RestartPolicy
		code   int
		want   bool
	}{
		{corev1.RestartPolicyAlways, 0, true},
		{corev1.RestartPolicyAlways, 1, true},
		{"", 0, true},
		{corev1.RestartPolicyOnFailure, 0, false},
		{corev1.RestartPolicyOnFailure, 137, true},
		{corev1.RestartPolicyNever, 1, false},
	}
	for _, tc := range cases {
		if got := ShouldRestart(tc.policy, tc.code); got != tc.want {
			t.Errorf("ShouldRestart(%q, %d) = %v, want %v", tc.policy, tc.code, got, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	b := Backoff{Initial: time.Second, Max: 10 * time.Second, Reset: time.Minute}
	cases := []struct {
		restarts int32
		ran      time.Duration
		want     time.Duration
	}{
		{0, 0, time.Second},
		{1, 0, 2 * time.Second},
		{2, time.Second, 4 * time.Second},
		{3, 0, 8 * time.Second},
		{4, 0, 10 * time.Second},
		{40, 0, 10 * time.Second},
		{40, time.Minute, time.Second},
	}
	for _, tc := range cases {
		if got := b.Delay(tc.restarts, tc.ran); got != tc.want {
			t.Errorf("Delay(%d, %s) = %s, want %s", tc.restarts, tc.ran, got, tc.want)
		}
	}
}

func TestIPAM(t *testing.T) {
	a := newIPAM()
	first, err := a.Assign("127.20.1.0/24", "a")
	if err != nil || first != "127.20.1.1" {
		t.Fatalf("first = %q, %v", first, err)
	}
	if again, _ := a.Assign("127.20.1.0/24", "a"); again != first {
		t.Errorf("same pod got a second address %s", again)
	}
	second, _ := a.Assign("127.20.1.0/24", "b")
	if second != "127.20.1.2" {
		t.Errorf("second = %s", second)
	}
	a.Release("a")
	if reused, _ := a.Assign("127.20.1.0/24", "c"); reused != first {
		t.Errorf("freed address not reused: got %s", reused)
	}
	for i := range 252 {
		if _, err := a.Assign("127.20.1.0/24", fmt.Sprint("x", i)); err != nil {
			if i != 251 {
				t.Fatalf("exhausted after %d more pods: %v", i, err)
			}
		}
	}
	if _, err := a.Assign("127.20.1.0/24", "late"); err == nil || !strings.Contains(err.Error(), "exhausted") {
		t.Errorf("full range: %v", err)
	}
	if _, err := a.Assign("10.0.0.0/24", "x"); err == nil {
		t.Error("non-loopback CIDR accepted")
	}
}

func TestReadiness(t *testing.T) {
	c := corev1.Container{Name: "worker", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}
	if _, ok, err := Readiness(c, "127.20.1.1"); ok || err != nil {
		t.Fatalf("no probe: ok %v err %v", ok, err)
	}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "readyz", Port: intstr.FromString("http")}}, PeriodSeconds: 10}
	check, ok, err := Readiness(c, "127.20.1.1")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if check.URL != "http://127.20.1.1:8080/readyz" || check.Period != MaxProbePeriod || check.Timeout != time.Second || check.FailureThreshold != 1 {
		t.Errorf("check = %+v", check)
	}
	c.ReadinessProbe.HTTPGet.Port = intstr.FromString("grpc")
	if _, _, err := Readiness(c, "127.20.1.1"); err == nil {
		t.Error("undeclared named port accepted")
	}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
	if _, _, err := Readiness(c, "127.20.1.1"); err == nil {
		t.Error("exec probe accepted")
	}
}

func TestTailBuffer(t *testing.T) {
	b := newTailBuffer(32)
	for i := range 100 {
		fmt.Fprintf(b, "line %d\n", i)
	}
	got := b.Lines(3)
	if got != "line 97\nline 98\nline 99" {
		t.Errorf("Lines(3) = %q", got)
	}
	if got := b.Lines(80); len(got) > 32 || !strings.HasPrefix(got, "line ") || !strings.HasSuffix(got, "line 99") {
		t.Errorf("Lines(80) = %q, want at most 32 bytes of whole lines", got)
	}
}
