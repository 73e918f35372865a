package workerreport

import (
	"testing"
	"time"

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
	}{
		{"ready and fresh", true, &fresh, nil, false, true},
		{"pod not ready", false, &fresh, nil, false, false},
		{"no report", true, nil, nil, false, false},
		{"stale", true, &fresh, func(r *v1alpha1.Report) { r.Time = metav1.NewTime(now.Add(-2 * time.Minute)) }, false, false},
		{"worker not ready", true, &fresh, func(r *v1alpha1.Report) { r.Ready = false }, false, false},
		{"draining", true, &fresh, func(r *v1alpha1.Report) { r.Draining = true }, false, false},
		{"error", true, &fresh, func(r *v1alpha1.Report) { r.Error = "does not fit" }, false, false},
		{"being deleted", true, &fresh, nil, true, false},
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
		if got := Counted(pod, r, now, 90*time.Second); got != tc.want {
			t.Errorf("%s: counted %v, want %v", tc.name, got, tc.want)
		}
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
