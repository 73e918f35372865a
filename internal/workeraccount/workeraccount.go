// Package workeraccount gives workers an identity that may report: a
// ServiceAccount with a Role to get and patch pods, in each namespace where
// a service leaves spec.worker.serviceAccountName empty. Every service that
// relies on them is an owner, so they go when the last such service goes.
package workeraccount

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/workerpod"
)

// Name of the ServiceAccount, Role and RoleBinding.
const Name = workerpod.DefaultServiceAccount

// Rules are what a worker needs: read and patch its own pod's annotations.
var Rules = []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "patch"}}}

// Ensure makes the worker ServiceAccount, Role and RoleBinding exist in
// svc's namespace, with svc among their owners. It runs on every
// reconcile, so it first reads each object (from the cache) and writes only
// one that is missing or differs: CreateOrPatch's patch computation over
// objects owned by every service of the namespace took a tenth of the
// operator's CPU in the 1,000-node scale run although nothing changed.
// latest reads from the API server (the manager's API reader): it settles
// a create that another service's reconcile won while the cache lagged.
func Ensure(ctx context.Context, c client.Client, latest client.Reader, svc *v1alpha1.MLAService) error {
	meta := func() metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: svc.Namespace, Name: Name}
	}
	own := func(obj client.Object) error {
		labels := obj.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		labels[v1alpha1.LabelManagedBy] = v1alpha1.ManagedByValue
		obj.SetLabels(labels)
		return controllerutil.SetOwnerReference(svc, obj, c.Scheme())
	}
	roleRef := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: Name}
	subjects := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: Name, Namespace: svc.Namespace}}
	sa := &corev1.ServiceAccount{ObjectMeta: meta()}
	role := &rbacv1.Role{ObjectMeta: meta()}
	binding := &rbacv1.RoleBinding{ObjectMeta: meta()}
	for _, step := range []struct {
		obj    client.Object
		same   func() bool // the object as read already is as wanted, apart from metadata
		mutate func() error
	}{
		{sa, func() bool { return true }, func() error { return own(sa) }},
		{role, func() bool { return equality.Semantic.DeepEqual(role.Rules, Rules) },
			func() error { role.Rules = Rules; return own(role) }},
		{binding, func() bool {
			return equality.Semantic.DeepEqual(binding.RoleRef, roleRef) && equality.Semantic.DeepEqual(binding.Subjects, subjects)
		}, func() error {
			binding.RoleRef, binding.Subjects = roleRef, subjects
			return own(binding)
		}},
	} {
		err := c.Get(ctx, client.ObjectKeyFromObject(step.obj), step.obj)
		if err == nil && step.same() && owned(step.obj, svc) {
			continue
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("worker account %T %s/%s: %w", step.obj, svc.Namespace, Name, err)
		}
		_, err = controllerutil.CreateOrPatch(ctx, c, step.obj, step.mutate)
		if apierrors.IsAlreadyExists(err) {
			// Another service of the namespace, reconciled at the same
			// time, created it first and the cache has not seen it yet
			// (another CreateOrPatch would read the same cache and fail
			// the same way): update the object the API server holds.
			err = updateLatest(ctx, c, latest, step.obj, step.mutate)
		}
		if err != nil {
			return fmt.Errorf("worker account %T %s/%s: %w", step.obj, svc.Namespace, Name, err)
		}
	}
	return nil
}

// updateLatest reads obj from the API server, applies mutate and updates
// it; the read's resourceVersion turns a concurrent change (another
// service adding its owner reference) into a conflict, which is retried
// rather than overwritten.
func updateLatest(ctx context.Context, c client.Client, latest client.Reader, obj client.Object, mutate func() error) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := latest.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		if err := mutate(); err != nil {
			return err
		}
		return c.Update(ctx, obj)
	})
}

// owned reports whether obj carries the managed-by label and an owner
// reference to svc.
func owned(obj client.Object, svc *v1alpha1.MLAService) bool {
	if obj.GetLabels()[v1alpha1.LabelManagedBy] != v1alpha1.ManagedByValue {
		return false
	}
	for _, r := range obj.GetOwnerReferences() {
		if r.UID == svc.UID {
			return true
		}
	}
	return false
}
