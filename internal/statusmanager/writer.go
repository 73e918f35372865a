package statusmanager

import (
	"context"
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// Writer writes MLAService status. Use one Writer (by pointer) for all
// reconciles: it remembers what its own writes left on the server.
type Writer struct {
	Client client.Client
	// Reader reads the latest object after a conflict (the manager's API
	// reader): a cached read could be as stale as the conflict being retried.
	Reader client.Reader

	mu sync.Mutex
	// written is, per service, the resourceVersion this writer's last
	// status write produced (or the latest it confirmed by a read).
	written map[types.NamespacedName]string
}

// Write replaces the status of svc (as the reconcile read it, from the
// cache) with status, retrying on conflicts against the latest object. It
// writes nothing when the status is already that. The first attempt trusts
// svc's resourceVersion, so a reconcile costs one status request, not a read
// and a write; only a conflict costs a read. The whole status is derived
// from the cluster on every reconcile, so replacing it never loses another
// writer's update: there is none.
//
// "Already that" is trusted from the cache only when the cached object is
// the one this writer's last write left, or no write is remembered (a
// fresh start lists fresh objects). Otherwise the cache may predate that
// write: a reconcile computing the status the server held before it would
// see nothing to do, and the server would keep the newer, now wrong, status
// until some later event. Then the latest object is read first.
func (w *Writer) Write(ctx context.Context, svc *v1alpha1.MLAService, status *v1alpha1.MLAServiceStatus) error {
	key := client.ObjectKeyFromObject(svc)
	// latest is the copy to compare and update; nil when it must be read.
	var latest *v1alpha1.MLAService
	if !equality.Semantic.DeepEqual(svc.Status, *status) {
		latest = svc.DeepCopy()
	} else if w.cacheHoldsLastWrite(key, svc.ResourceVersion) {
		return nil
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if latest == nil {
			latest = &v1alpha1.MLAService{}
			if err := w.Reader.Get(ctx, key, latest); err != nil {
				return fmt.Errorf("reading the latest copy: %w", err)
			}
		}
		if equality.Semantic.DeepEqual(latest.Status, *status) {
			w.remember(key, latest.ResourceVersion)
			return nil
		}
		latest.Status = *status.DeepCopy()
		if err := w.Client.Status().Update(ctx, latest); err != nil {
			latest = nil // a conflict: read the latest copy again
			return err
		}
		w.remember(key, latest.ResourceVersion) // the update's response
		return nil
	})
	if err != nil {
		return fmt.Errorf("writing status of %s: %w", key, err)
	}
	return nil
}

// Forget drops what the writer remembers of a deleted service.
func (w *Writer) Forget(key types.NamespacedName) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.written, key)
}

func (w *Writer) cacheHoldsLastWrite(key types.NamespacedName, resourceVersion string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	last, ok := w.written[key]
	return !ok || last == resourceVersion
}

func (w *Writer) remember(key types.NamespacedName, resourceVersion string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.written == nil {
		w.written = map[types.NamespacedName]string{}
	}
	w.written[key] = resourceVersion
}
