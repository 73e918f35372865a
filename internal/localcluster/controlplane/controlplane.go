// Package controlplane runs a Kubernetes control plane on loopback from the
// binaries in bin/: etcd and kube-apiserver through controller-runtime's
// envtest (which generates the certificates and an admin user), plus
// kube-scheduler and kube-controller-manager as child processes.
//
// kube-controller-manager is not optional: its node lifecycle controller
// lifts the not-ready taint every new node gets, its garbage collector
// deletes pods whose owner is gone, and pod GC removes pods of deleted nodes.
package controlplane

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/mla-operator/mla-operator/internal/localcluster/childproc"
)

// Controllers are the kube-controller-manager controllers the local cluster
// needs; the rest (volumes, endpoints, certificates, ...) would only cost CPU.
var Controllers = []string{
	"node-lifecycle-controller",
	"taint-eviction-controller",
	"garbage-collector-controller",
	"pod-garbage-collector-controller",
	"namespace-controller",
	"serviceaccount-controller",
	"deployment-controller",
	"replicaset-controller",
}

// Options configure Start.
type Options struct {
	// BinDir holds etcd, kube-apiserver, kube-scheduler,
	// kube-controller-manager and kubectl.
	BinDir string
	// WorkDir receives the kubeconfig and the components' logs.
	WorkDir string
	// CRDDirs are installed once the apiserver is up.
	CRDDirs []string
	// Logf reports progress; nil is silent.
	Logf func(format string, args ...any)
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	// Config reaches the apiserver as a cluster admin.
	Config *rest.Config
	// KubeconfigPath is an admin kubeconfig for kubectl, kwok, the operator
	// and the workers.
	KubeconfigPath string

	env       *envtest.Environment
	children  []*childproc.Process
	childName []string
	logDir    string
}

// Binaries are the files Start needs in BinDir.
var Binaries = []string{"etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubectl"}

// Start brings the control plane up. On error everything started is stopped.
func Start(ctx context.Context, opts Options) (_ *ControlPlane, err error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	for _, b := range Binaries {
		if _, err := os.Stat(filepath.Join(opts.BinDir, b)); err != nil {
			return nil, fmt.Errorf("control-plane binary %s missing in %s (run `make bins`): %w", b, opts.BinDir, err)
		}
	}
	cp := &ControlPlane{logDir: filepath.Join(opts.WorkDir, "logs")}
	defer func() {
		if err != nil {
			_ = cp.Stop()
		}
	}()

	logf("starting etcd and kube-apiserver")
	etcdPath, err := dieWithParent(opts.WorkDir, filepath.Join(opts.BinDir, "etcd"))
	if err != nil {
		return nil, err
	}
	apiserverPath, err := dieWithParent(opts.WorkDir, filepath.Join(opts.BinDir, "kube-apiserver"))
	if err != nil {
		return nil, err
	}
	cp.env = &envtest.Environment{
		ControlPlane: envtest.ControlPlane{
			Etcd:      &envtest.Etcd{Path: etcdPath},
			APIServer: &envtest.APIServer{Path: apiserverPath},
		},
		BinaryAssetsDirectory:    opts.BinDir,
		CRDDirectoryPaths:        opts.CRDDirs,
		ErrorIfCRDPathMissing:    len(opts.CRDDirs) > 0,
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	if cp.Config, err = cp.env.Start(); err != nil {
		return nil, fmt.Errorf("starting etcd and kube-apiserver: %w", err)
	}
	user, err := cp.env.AddUser(envtest.User{Name: "mla-local-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, fmt.Errorf("adding the admin user: %w", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return nil, fmt.Errorf("writing the admin kubeconfig: %w", err)
	}
	cp.Config = user.Config()
	cp.KubeconfigPath = filepath.Join(opts.WorkDir, "kubeconfig")
	if err := os.WriteFile(cp.KubeconfigPath, kubeconfig, 0o600); err != nil {
		return nil, fmt.Errorf("writing kubeconfig: %w", err)
	}

	logf("starting kube-scheduler and kube-controller-manager")
	if err := cp.startChild("kube-scheduler", filepath.Join(opts.BinDir, "kube-scheduler"),
		"--kubeconfig="+cp.KubeconfigPath,
		"--authentication-kubeconfig="+cp.KubeconfigPath,
		"--authorization-kubeconfig="+cp.KubeconfigPath,
		"--leader-elect=false",
		"--secure-port=0",
		"--v=1",
	); err != nil {
		return nil, err
	}
	if err := cp.startChild("kube-controller-manager", filepath.Join(opts.BinDir, "kube-controller-manager"),
		"--kubeconfig="+cp.KubeconfigPath,
		"--authentication-kubeconfig="+cp.KubeconfigPath,
		"--authorization-kubeconfig="+cp.KubeconfigPath,
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
		"--controllers="+strings.Join(Controllers, ","),
		// Nodes come and go in tests: notice a silent one within 20 s.
		"--node-monitor-grace-period=20s",
		"--node-monitor-period=2s",
		"--v=1",
	); err != nil {
		return nil, err
	}
	// A component that dies at once (bad flag, port taken) should fail the
	// start, not a test much later.
	select {
	case <-time.After(time.Second):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := cp.Healthy(); err != nil {
		return nil, err
	}
	return cp, nil
}

func (cp *ControlPlane) startChild(name, path string, args ...string) error {
	p, err := childproc.Start(childproc.Spec{Name: name, Path: path, Args: args, LogPath: filepath.Join(cp.logDir, name+".log")})
	if err != nil {
		return err
	}
	cp.children = append(cp.children, p)
	cp.childName = append(cp.childName, name)
	return nil
}

// Healthy reports a component process that exited.
func (cp *ControlPlane) Healthy() error {
	for i, p := range cp.children {
		select {
		case <-p.Done():
			return fmt.Errorf("%s exited with code %d; see %s", cp.childName[i], p.ExitCode(), filepath.Join(cp.logDir, cp.childName[i]+".log"))
		default:
		}
	}
	return nil
}

// LogDir holds the components' logs.
func (cp *ControlPlane) LogDir() string { return cp.logDir }

// Stop stops the scheduler and controller manager, then the apiserver and
// etcd.
func (cp *ControlPlane) Stop() error {
	for i := len(cp.children) - 1; i >= 0; i-- {
		cp.children[i].Stop(5 * time.Second)
	}
	cp.children = nil
	if cp.env != nil && cp.env.Config != nil {
		err := cp.env.Stop()
		cp.env = nil
		if err != nil {
			return fmt.Errorf("stopping etcd and kube-apiserver: %w", err)
		}
	}
	return nil
}

// dieWithParent returns a path that starts binary with a parent-death
// signal (util-linux setpriv), as childproc does for the other components:
// envtest starts etcd and kube-apiserver without one, so a test binary
// killed by its timeout would leave them running. Without setpriv the
// binary is started as it is.
func dieWithParent(workDir, binary string) (string, error) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		return binary, nil
	}
	dir := filepath.Join(workDir, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	wrapper := filepath.Join(dir, filepath.Base(binary))
	script := fmt.Sprintf("#!/bin/sh\nexec %s --pdeathsig KILL -- %s \"$@\"\n", setpriv, binary)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		return "", fmt.Errorf("writing %s: %w", wrapper, err)
	}
	return wrapper, nil
}
