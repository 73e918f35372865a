package statusmanager

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// Writer writes MLAService status.
type Writer struct {
	Client client.Client
	// Reader reads the latest object (the manager's API reader): a cached
	// read could be as stale as the conflict being retried.
	Reader client.Reader
}

// Write replaces the status of the service key with status, retrying on
// conflicts against the latest object. It writes nothing when the status is
// already that. The whole status is derived from the cluster on every
// reconcile, so replacing it never loses another writer's update: there is
// none.
func (w Writer) Write(ctx context.Context, key types.NamespacedName, status *v1alpha1.MLAServiceStatus) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var svc v1alpha1.MLAService
		if err := w.Reader.Get(ctx, key, &svc); err != nil {
			return err
		}
		if equality.Semantic.DeepEqual(svc.Status, *status) {
			return nil
		}
		svc.Status = *status.DeepCopy()
		return w.Client.Status().Update(ctx, &svc)
	})
	if err != nil {
		return fmt.Errorf("writing status of %s: %w", key, err)
	}
	return nil
}
