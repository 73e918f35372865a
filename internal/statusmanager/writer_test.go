package statusmanager

import (
	"context"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/test/builders"
)

func writerFixture(t *testing.T) (client.WithWatch, *v1alpha1.MLAService, *int) {
	t.Helper()
	scheme := builders.Scheme(t)
	svc := builders.MLAService("ns", "svc").Obj()
	svc.Status.ReadyReplicas = 2
	base := fake.NewClientBuilder().WithScheme(scheme).WithObjects(svc).WithStatusSubresource(svc).Build()
	writes := new(int)
	counted := interceptor.NewClient(base, interceptor.Funcs{
		SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
			*writes++
			return c.SubResource(sub).Update(ctx, obj, opts...)
		},
	})
	var cached v1alpha1.MLAService
	if err := base.Get(context.Background(), client.ObjectKeyFromObject(svc), &cached); err != nil {
		t.Fatal(err)
	}
	return counted, &cached, writes
}

func status(ready int32) *v1alpha1.MLAServiceStatus {
	return &v1alpha1.MLAServiceStatus{ReadyReplicas: ready}
}

// A reconcile's cached copy can predate the status its previous reconcile
// wrote. When the new status equals that older copy, the server still holds
// the newer one: the writer must check and write, not skip.
func TestWriterDoesNotTrustACacheOlderThanItsOwnWrite(t *testing.T) {
	c, cached, writes := writerFixture(t)
	w := &Writer{Client: c, Reader: c}
	ctx := context.Background()
	if err := w.Write(ctx, cached, status(3)); err != nil { // 2 -> 3 on the server
		t.Fatal(err)
	}
	// The next reconcile still sees the cache's copy with 2, and computes 2.
	if err := w.Write(ctx, cached, status(2)); err != nil {
		t.Fatal(err)
	}
	var got v1alpha1.MLAService
	if err := c.Get(ctx, client.ObjectKeyFromObject(cached), &got); err != nil {
		t.Fatal(err)
	}
	if got.Status.ReadyReplicas != 2 || *writes != 2 {
		t.Errorf("server readyReplicas %d after %d writes, want 2 after 2", got.Status.ReadyReplicas, *writes)
	}
	// Now the cache catches up with that write: nothing to do, no request.
	if err := w.Write(ctx, &got, status(2)); err != nil {
		t.Fatal(err)
	}
	if *writes != 2 {
		t.Errorf("%d writes for an unchanged status", *writes)
	}
}

// With nothing written yet (a fresh start lists fresh objects), a status
// equal to the cached one costs no request.
func TestWriterSkipsAnUnchangedStatus(t *testing.T) {
	c, cached, writes := writerFixture(t)
	w := &Writer{Client: c, Reader: c}
	if err := w.Write(context.Background(), cached, status(2)); err != nil {
		t.Fatal(err)
	}
	if *writes != 0 {
		t.Errorf("%d writes for an unchanged status", *writes)
	}
}

// The first attempt trusts the cached copy's resourceVersion; when the
// object changed since, the conflict costs one read of the latest copy and
// a second write.
func TestWriterRetriesAConflictOnTheLatestCopy(t *testing.T) {
	c, cached, writes := writerFixture(t)
	w := &Writer{Client: c, Reader: c}
	ctx := context.Background()
	changed := cached.DeepCopy()
	changed.Spec.ContextLength *= 2
	if err := c.Update(ctx, changed); err != nil { // the cache has not seen this
		t.Fatal(err)
	}
	if err := w.Write(ctx, cached, status(5)); err != nil {
		t.Fatal(err)
	}
	var got v1alpha1.MLAService
	if err := c.Get(ctx, client.ObjectKeyFromObject(cached), &got); err != nil {
		t.Fatal(err)
	}
	if got.Status.ReadyReplicas != 5 || got.Spec.ContextLength != changed.Spec.ContextLength || *writes != 2 {
		t.Errorf("server readyReplicas %d, contextLength %d after %d writes, want 5, %d after 2 (a conflict, then a write)",
			got.Status.ReadyReplicas, got.Spec.ContextLength, *writes, changed.Spec.ContextLength)
	}
	// That write is remembered: a cache holding it needs no request.
	if err := w.Write(ctx, &got, status(5)); err != nil {
		t.Fatal(err)
	}
	if *writes != 2 {
		t.Errorf("%d writes for an unchanged status", *writes)
	}
}
