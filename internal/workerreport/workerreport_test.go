package workerreport

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/test/builders"
)

func TestCounted(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	fresh := v1alpha1.Report{CapacityTokens: 10, Ready: true, Time: metav1.NewTime(now.Add(-time.Minute))}
	deleting := metav1.NewTime(now)
	for _, tc := range []struct {
		name   string
		ready  bool
		report *v1alpha1.Report
		mutate func(*v1alpha1.Report)
		delete bool
		want   bool
		// ages, when set, replaces the worker's clock (now - report time).
		ages Ages
	}{
		{"ready and fresh", true, &fresh, nil, false, true, nil},
		{"pod not ready", false, &fresh, nil, false, false, nil},
		{"no report", true, nil, nil, false, false, nil},
		{"stale", true, &fresh, func(r *v1alpha1.Report) { r.Time = metav1.NewTime(now.Add(-2 * time.Minute)) }, false, false, nil},
		{"worker not ready", true, &fresh, func(r *v1alpha1.Report) { r.Ready = false }, false, false, nil},
		{"draining", true, &fresh, func(r *v1alpha1.Report) { r.Draining = true }, false, false, nil},
		{"error", true, &fresh, func(r *v1alpha1.Report) { r.Error = "does not fit" }, false, false, nil},
		{"being deleted", true, &fresh, nil, true, false, nil},
		// The age is the operator's, whatever the report's time says.
		{"old time, renewed by the operator's clock", true, &fresh, func(r *v1alpha1.Report) { r.Time = metav1.NewTime(now.Add(-time.Hour)) }, false, true,
			func(*corev1.Pod, *v1alpha1.Report) time.Duration { return 0 }},
		{"recent time, stale by the operator's clock", true, &fresh, nil, false, false,
			func(*corev1.Pod, *v1alpha1.Report) time.Duration { return 91 * time.Second }},
	} {
		b := builders.Pod("ns", "w").Running(tc.ready)
		if tc.report != nil {
			r := *tc.report
			if tc.mutate != nil {
				tc.mutate(&r)
			}
			b.Report(r)
		}
		pod := b.Obj()
		if tc.delete {
			pod.DeletionTimestamp = &deleting
		}
		r, err := Parse(pod)
		if err != nil {
			t.Fatal(err)
		}
		ages := tc.ages
		if ages == nil {
			ages = SinceReportTime(now)
		}
		if got := Counted(pod, r, ages, 90*time.Second); got != tc.want {
			t.Errorf("%s: counted %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFreshNeedsATime(t *testing.T) {
	called := false
	ages := func(*corev1.Pod, *v1alpha1.Report) time.Duration { called = true; return 0 }
	pod := builders.Pod("ns", "w").Obj()
	if Fresh(pod, nil, ages, time.Minute) || Fresh(pod, &v1alpha1.Report{Ready: true}, ages, time.Minute) {
		t.Error("a missing report, or one without a time, is fresh")
	}
	if called {
		t.Error("ages asked about a report without a time")
	}
}

func TestParseRejectsGarbage(t *testing.T) {
	pod := builders.Pod("ns", "w").Annotation(v1alpha1.AnnotationReport, "{not json").Obj()
	if _, err := Parse(pod); err == nil {
		t.Fatal("garbage report parsed")
	}
	if r, err := Parse(builders.Pod("ns", "w").Obj()); r != nil || err != nil {
		t.Fatalf("no annotation: %v %v", r, err)
	}
}
