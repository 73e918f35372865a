// Package framework starts one real kube-apiserver and etcd (envtest, with
// the binaries that `make bins` builds into bin/) with the MLAService CRD
// installed, and gives integration tests a client, a kubeconfig, kubectl and
// fresh namespaces.
package framework

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// Env is a running control plane.
type Env struct {
	// Root is the repository root.
	Root string
	// BinDir holds etcd, kube-apiserver and kubectl.
	BinDir string
	// Config reaches the apiserver as a cluster admin.
	Config *rest.Config
	// Scheme knows core types and v1alpha1.
	Scheme *runtime.Scheme
	// Client is a direct (uncached) client.
	Client client.Client
	// KubeconfigPath is an admin kubeconfig for kubectl.
	KubeconfigPath string

	env     *envtest.Environment
	tempDir string
}

// RepoRoot finds the module root by walking up from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if b, _ := os.ReadFile(filepath.Join(dir, "go.mod")); bytes.HasPrefix(b, []byte("module github.com/mla-operator/mla-operator\n")) {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no mla-operator go.mod above the working directory")
		}
		dir = parent
	}
}

// Start runs etcd and kube-apiserver from bin/ (or KUBEBUILDER_ASSETS) and
// installs the CRDs of config/crd/bases. Missing binaries are an error, not
// a skip: `make test` builds them first.
func Start() (*Env, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	binDir := os.Getenv("KUBEBUILDER_ASSETS")
	if binDir == "" {
		binDir = filepath.Join(root, "bin")
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kubectl"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return nil, fmt.Errorf("control-plane binary %s missing in %s (run `make bins`): %w", b, binDir, err)
		}
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	e := &Env{Root: root, BinDir: binDir, Scheme: scheme}
	e.env = &envtest.Environment{
		BinaryAssetsDirectory: binDir,
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
		// Loopback only; generous for a loaded 2-core machine.
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	e.Config, err = e.env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting envtest control plane from %s: %w", binDir, err)
	}
	// Client-side throttling would slow tests that create many objects.
	e.Config.QPS, e.Config.Burst = 500, 1000
	if e.Client, err = client.New(e.Config, client.Options{Scheme: scheme}); err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("client: %w", err)
	}
	if e.tempDir, err = os.MkdirTemp("", "mla-integration-"); err != nil {
		_ = e.Stop()
		return nil, err
	}
	user, err := e.env.AddUser(envtest.User{Name: "integration-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("adding admin user: %w", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("admin kubeconfig: %w", err)
	}
	e.KubeconfigPath = filepath.Join(e.tempDir, "kubeconfig")
	if err := os.WriteFile(e.KubeconfigPath, kubeconfig, 0o600); err != nil {
		_ = e.Stop()
		return nil, err
	}
	return e, nil
}

// Stop stops the control plane and removes temporary files.
func (e *Env) Stop() error {
	if e.tempDir != "" {
		_ = os.RemoveAll(e.tempDir)
	}
	return e.env.Stop()
}

// Namespace creates a fresh namespace for t and deletes it afterwards.
func (e *Env) Namespace(t testing.TB) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "it-" + sanitize(t.Name()) + "-"}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() { _ = e.Client.Delete(context.Background(), ns) })
	return ns.Name
}

// Kubectl runs bin/kubectl against the apiserver and returns combined
// output.
func (e *Env) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(e.BinDir, "kubectl"), append([]string{"--kubeconfig", e.KubeconfigPath}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Eventually polls cond every 100 ms until it returns nil or timeout passes,
// then fails t with the last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func sanitize(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
		if b.Len() >= 30 {
			break
		}
	}
	return strings.Trim(b.String(), "-")
}
