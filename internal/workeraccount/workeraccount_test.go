package workeraccount

import (
	"context"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/test/builders"
)

// twoServices are two services of one namespace that share its worker
// account.
func twoServices() (a, b *v1alpha1.MLAService) {
	return builders.MLAService("ns", "a").UID("uid-a").Obj(), builders.MLAService("ns", "b").UID("uid-b").Obj()
}

// ownerUIDs lists obj's owners, in the order of its owner references.
func ownerUIDs(obj client.Object) []types.UID {
	var uids []types.UID
	for _, r := range obj.GetOwnerReferences() {
		uids = append(uids, r.UID)
	}
	return uids
}

func TestEnsureGivesWorkersAnAccountThatMayReport(t *testing.T) {
	scheme := builders.Scheme(t)
	c := fake.NewClientBuilder().WithScheme(scheme).Build()
	ctx := context.Background()
	a, b := twoServices()
	for _, svc := range []*v1alpha1.MLAService{a, b, a} {
		if err := Ensure(ctx, c, c, svc); err != nil {
			t.Fatal(err)
		}
	}
	key := client.ObjectKey{Namespace: "ns", Name: Name}
	var sa corev1.ServiceAccount
	var role rbacv1.Role
	var binding rbacv1.RoleBinding
	for _, obj := range []client.Object{&sa, &role, &binding} {
		if err := c.Get(ctx, key, obj); err != nil {
			t.Fatalf("%T: %v", obj, err)
		}
		for _, r := range obj.GetOwnerReferences() {
			if r.Controller != nil && *r.Controller {
				t.Errorf("%T: %s is its controller; the account is shared", obj, r.Name)
			}
		}
		if owners := ownerUIDs(obj); !slices.Equal(owners, []types.UID{"uid-a", "uid-b"}) {
			t.Errorf("%T owners %v, want both services once", obj, owners)
		}
	}
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].Verbs, []string{"get", "patch"}) || role.Rules[0].Resources[0] != "pods" {
		t.Errorf("role rules %+v", role.Rules)
	}
	if binding.RoleRef.Name != Name || len(binding.Subjects) != 1 || binding.Subjects[0].Name != Name || binding.Subjects[0].Namespace != "ns" {
		t.Errorf("binding %+v", binding)
	}
}

// Once the account is as wanted, Ensure only reads: it runs on every
// reconcile of every service.
func TestEnsureWritesNothingWhenUnchanged(t *testing.T) {
	scheme := builders.Scheme(t)
	writes := 0
	count := func(ctx context.Context, c client.WithWatch, obj client.Object, _ ...client.CreateOption) error {
		writes++
		return c.Create(ctx, obj)
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithInterceptorFuncs(interceptor.Funcs{
		Create: count,
		Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, p client.Patch, opts ...client.PatchOption) error {
			writes++
			return c.Patch(ctx, obj, p, opts...)
		},
	}).Build()
	ctx := context.Background()
	a, b := twoServices()
	for _, tc := range []struct {
		svc    *v1alpha1.MLAService
		writes int
	}{{a, 3}, {a, 0}, {b, 3}, {a, 0}, {b, 0}} {
		writes = 0
		if err := Ensure(ctx, c, c, tc.svc); err != nil {
			t.Fatal(err)
		}
		if writes != tc.writes {
			t.Errorf("Ensure(%s): %d writes, want %d", tc.svc.Name, writes, tc.writes)
		}
	}
	// Someone edits the role: the next reconcile repairs it.
	var role rbacv1.Role
	if err := c.Get(ctx, client.ObjectKey{Namespace: "ns", Name: Name}, &role); err != nil {
		t.Fatal(err)
	}
	role.Rules = nil
	if err := c.Update(ctx, &role); err != nil {
		t.Fatal(err)
	}
	writes = 0
	if err := Ensure(ctx, c, c, a); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "ns", Name: Name}, &role); err != nil {
		t.Fatal(err)
	}
	if writes != 1 || len(role.Rules) != 1 {
		t.Errorf("after an edit: %d writes, rules %+v; want the role repaired with one write", writes, role.Rules)
	}
}

// Another service's reconcile created the account a moment ago and this
// operator's cache has not seen it: Ensure must add this service as an
// owner of the objects the API server holds, not fail on AlreadyExists.
func TestEnsureWhenTheCacheLagsBehindAnotherServicesCreate(t *testing.T) {
	scheme := builders.Scheme(t)
	server := fake.NewClientBuilder().WithScheme(scheme).Build()
	ctx := context.Background()
	a, b := twoServices()
	if err := Ensure(ctx, server, server, b); err != nil {
		t.Fatal(err)
	}
	// The cache has seen none of b's objects yet.
	lagging := interceptor.NewClient(server.(client.WithWatch), interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			return apierrors.NewNotFound(schema.GroupResource{Resource: "cached"}, key.Name)
		},
	})
	if err := Ensure(ctx, lagging, server, a); err != nil {
		t.Fatalf("Ensure with a lagging cache: %v", err)
	}
	key := client.ObjectKey{Namespace: "ns", Name: Name}
	for _, obj := range []client.Object{&corev1.ServiceAccount{}, &rbacv1.Role{}, &rbacv1.RoleBinding{}} {
		if err := server.Get(ctx, key, obj); err != nil {
			t.Fatal(err)
		}
		owners := ownerUIDs(obj)
		slices.Sort(owners)
		if !slices.Equal(owners, []types.UID{"uid-a", "uid-b"}) {
			t.Errorf("%T owners %v, want both services", obj, owners)
		}
	}
}
