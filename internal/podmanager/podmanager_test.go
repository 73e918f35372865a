package podmanager

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/test/builders"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func newManager(t *testing.T, objs ...client.Object) *Manager {
	return &Manager{Client: fake.NewClientBuilder().WithScheme(builders.Scheme(t)).WithObjects(objs...).Build()}
}

func names(pods []corev1.Pod) map[string]bool {
	out := map[string]bool{}
	for _, p := range pods {
		out[p.Name] = p.DeletionTimestamp != nil
	}
	return out
}

func TestCreatedPodsAreSeenBeforeTheCacheShowsThem(t *testing.T) {
	m := newManager(t)
	ctx := context.Background()
	if err := m.Create(ctx, builders.Pod("ns", "w-0").GPURequest(1).Obj(), t0); err != nil {
		t.Fatal(err)
	}
	// A stale cache still lists nothing: the created pod is added.
	if got := names(m.Observe(nil, t0.Add(time.Second))); len(got) != 1 {
		t.Fatalf("observed %v, want the created pod", got)
	}
	// Once the cache shows it, it is not added twice.
	listed := []corev1.Pod{*builders.Pod("ns", "w-0").Obj()}
	if got := m.Observe(listed, t0.Add(2*time.Second)); len(got) != 1 {
		t.Fatalf("observed %d pods, want 1", len(got))
	}
	// And the expectation is gone: a later list without it is trusted.
	if got := m.Observe(nil, t0.Add(3*time.Second)); len(got) != 0 {
		t.Fatalf("observed %v after the cache showed the pod", names(got))
	}
}

func TestCreatedExpectationsExpire(t *testing.T) {
	m := newManager(t)
	if err := m.Create(context.Background(), builders.Pod("ns", "w-0").Obj(), t0); err != nil {
		t.Fatal(err)
	}
	if got := m.Observe(nil, t0.Add(ExpectationTTL)); len(got) != 0 {
		t.Fatalf("expectation outlived its TTL: %v", names(got))
	}
}

func TestCreateOfAnExistingNameSucceeds(t *testing.T) {
	m := newManager(t, builders.Pod("ns", "w-0").Obj())
	if err := m.Create(context.Background(), builders.Pod("ns", "w-0").Obj(), t0); err != nil {
		t.Fatalf("a second create of a deterministic name: %v", err)
	}
}

func TestDeletedPodsLookTerminatingUntilTheCacheCatchesUp(t *testing.T) {
	pod := builders.Pod("ns", "w-0").Obj()
	pod.UID = types.UID("u1")
	m := newManager(t, pod)
	ctx := context.Background()
	grace := 5 * time.Second
	if err := m.Delete(ctx, pod, DeleteOptions{GracePeriod: &grace, DrainReason: "scale down"}, t0); err != nil {
		t.Fatal(err)
	}
	var gone corev1.Pod
	if err := m.Client.Get(ctx, client.ObjectKeyFromObject(pod), &gone); err == nil {
		t.Fatalf("pod still exists: %+v", gone.Annotations)
	}
	stale := []corev1.Pod{*pod}
	if got := names(m.Observe(stale, t0.Add(time.Second))); !got["w-0"] {
		t.Fatalf("deleted pod observed live: %v", got)
	}
	// A deleted pod that is already gone, and deleting again, are fine.
	if err := m.Delete(ctx, pod, DeleteOptions{}, t0); err != nil {
		t.Fatal(err)
	}
}

func TestDrainAnnotatesBeforeDeleting(t *testing.T) {
	pod := builders.Pod("ns", "w-0").Obj()
	pod.UID = types.UID("u1")
	pod.Finalizers = []string{"test/keep"} // keeps the object to inspect
	m := newManager(t, pod)
	ctx := context.Background()
	if err := m.Delete(ctx, pod, DeleteOptions{DrainReason: "scale down to 1"}, t0); err != nil {
		t.Fatal(err)
	}
	var got corev1.Pod
	if err := m.Client.Get(ctx, client.ObjectKeyFromObject(pod), &got); err != nil {
		t.Fatal(err)
	}
	if got.Annotations[v1alpha1.AnnotationDrainReason] != "scale down to 1" || got.DeletionTimestamp == nil {
		t.Fatalf("annotations %v deletion %v", got.Annotations, got.DeletionTimestamp)
	}
}
