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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
// svc's namespace, with svc among their owners.
func Ensure(ctx context.Context, c client.Client, svc *v1alpha1.MLAService) error {
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
	sa := &corev1.ServiceAccount{ObjectMeta: meta()}
	role := &rbacv1.Role{ObjectMeta: meta()}
	binding := &rbacv1.RoleBinding{ObjectMeta: meta()}
	for _, step := range []struct {
		obj    client.Object
		mutate func() error
	}{
		{sa, func() error { return own(sa) }},
		{role, func() error { role.Rules = Rules; return own(role) }},
		{binding, func() error {
			binding.RoleRef = rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: Name}
			binding.Subjects = []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: Name, Namespace: svc.Namespace}}
			return own(binding)
		}},
	} {
		if _, err := controllerutil.CreateOrPatch(ctx, c, step.obj, step.mutate); err != nil {
			return fmt.Errorf("worker account %T %s/%s: %w", step.obj, svc.Namespace, Name, err)
		}
	}
	return nil
}
