package builders

import (
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// Scheme is a scheme with the Kubernetes built-in types and MLAService, for
// fake clients.
func Scheme(t testing.TB) *runtime.Scheme {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, v1alpha1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatalf("building the test scheme: %v", err)
		}
	}
	return scheme
}
