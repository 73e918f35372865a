package statusmanager

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// Writer writes MLAService status.
type Writer struct {
	Client client.Client
	// Reader reads the latest object after a conflict (the manager's API
	// reader): a cached read could be as stale as the conflict being retried.
	Reader client.Reader
}

// Write replaces the status of svc (as the reconcile read it, from the
// cache) with status, retrying on conflicts against the latest object. It
// writes nothing when the status is already that. The first attempt trusts
// svc's resourceVersion, so a reconcile costs one status request, not a read
// and a write; only a conflict costs a read. The whole status is derived
// from the cluster on every reconcile, so replacing it never loses another
// writer's update: there is none.
func (w Writer) Write(ctx context.Context, svc *v1alpha1.MLAService, status *v1alpha1.MLAServiceStatus) error {
	key := client.ObjectKeyFromObject(svc)
	latest := svc.DeepCopy()
	first := true
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if !first {
			latest = &v1alpha1.MLAService{}
			if err := w.Reader.Get(ctx, key, latest); err != nil {
				return err
			}
		}
		first = false
		if equality.Semantic.DeepEqual(latest.Status, *status) {
			return nil
		}
		latest.Status = *status.DeepCopy()
		return w.Client.Status().Update(ctx, latest)
	})
	if err != nil {
		return fmt.Errorf("writing status of %s: %w", key, err)
	}
	return nil
}
