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

// writerFixture is a writer over a fake API server holding one service
// with readyReplicas 2, that service as a reconcile would read it from the
// cache, and the count of status writes made.
func writerFixture(t *testing.T) (*Writer, *v1alpha1.MLAService, *int) {
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
	return &Writer{Client: counted, Reader: counted}, &cached, writes
}

func status(ready int32) *v1alpha1.MLAServiceStatus {
	return &v1alpha1.MLAServiceStatus{ReadyReplicas: ready}
}

// write writes st over svc and fails the test on an error.
func write(t *testing.T, w *Writer, svc *v1alpha1.MLAService, st *v1alpha1.MLAServiceStatus) {
	t.Helper()
	if err := w.Write(context.Background(), svc, st); err != nil {
		t.Fatal(err)
	}
}

// writeUnchanged writes st over svc, whose status st already is on the
// server, and wants no status request for it.
func writeUnchanged(t *testing.T, w *Writer, svc *v1alpha1.MLAService, st *v1alpha1.MLAServiceStatus, writes *int) {
	t.Helper()
	before := *writes
	write(t, w, svc, st)
	if *writes != before {
		t.Errorf("%d writes for an unchanged status", *writes-before)
	}
}

// onServer reads svc as the API server holds it.
func onServer(t *testing.T, w *Writer, svc *v1alpha1.MLAService) *v1alpha1.MLAService {
	t.Helper()
	var got v1alpha1.MLAService
	if err := w.Reader.Get(context.Background(), client.ObjectKeyFromObject(svc), &got); err != nil {
		t.Fatal(err)
	}
	return &got
}

// A reconcile's cached copy can predate the status its previous reconcile
// wrote. When the new status equals that older copy, the server still holds
// the newer one: the writer must check and write, not skip.
func TestWriterDoesNotTrustACacheOlderThanItsOwnWrite(t *testing.T) {
	w, cached, writes := writerFixture(t)
	write(t, w, cached, status(3)) // 2 -> 3 on the server
	// The next reconcile still sees the cache's copy with 2, and computes 2.
	write(t, w, cached, status(2))
	got := onServer(t, w, cached)
	if got.Status.ReadyReplicas != 2 || *writes != 2 {
		t.Errorf("server readyReplicas %d after %d writes, want 2 after 2", got.Status.ReadyReplicas, *writes)
	}
	// Now the cache catches up with that write: nothing to do, no request.
	writeUnchanged(t, w, got, status(2), writes)
}

// With nothing written yet (a fresh start lists fresh objects), a status
// equal to the cached one costs no request.
func TestWriterSkipsAnUnchangedStatus(t *testing.T) {
	w, cached, writes := writerFixture(t)
	writeUnchanged(t, w, cached, status(2), writes)
}

// The first attempt trusts the cached copy's resourceVersion; when the
// object changed since, the conflict costs one read of the latest copy and
// a second write.
func TestWriterRetriesAConflictOnTheLatestCopy(t *testing.T) {
	w, cached, writes := writerFixture(t)
	changed := cached.DeepCopy()
	changed.Spec.ContextLength *= 2
	if err := w.Client.Update(context.Background(), changed); err != nil { // the cache has not seen this
		t.Fatal(err)
	}
	write(t, w, cached, status(5))
	got := onServer(t, w, cached)
	if got.Status.ReadyReplicas != 5 || got.Spec.ContextLength != changed.Spec.ContextLength || *writes != 2 {
		t.Errorf("server readyReplicas %d, contextLength %d after %d writes, want 5, %d after 2 (a conflict, then a write)",
			got.Status.ReadyReplicas, got.Spec.ContextLength, *writes, changed.Spec.ContextLength)
	}
	// That write is remembered: a cache holding it needs no request.
	writeUnchanged(t, w, got, status(5), writes)
}
