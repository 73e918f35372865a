// Package localcluster assembles the local simulated GPU cluster that
// `make run` and the e2e tests use: a loopback control plane, kwok with
// GPU-labelled nodes, the process runtime that runs real worker processes
// for worker pods, and optionally the operator.
package localcluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/mla-operator/mla-operator/internal/localcluster/childproc"
	"github.com/mla-operator/mla-operator/internal/localcluster/clusterconfig"
	"github.com/mla-operator/mla-operator/internal/localcluster/controlplane"
	"github.com/mla-operator/mla-operator/internal/localcluster/kwok"
	"github.com/mla-operator/mla-operator/internal/localcluster/processruntime"
)

// Options configure Start.
type Options struct {
	// BinDir holds the control-plane binaries and kwok.
	BinDir string
	// WorkDir receives the kubeconfig and logs; empty makes a temporary one
	// that Stop removes.
	WorkDir string
	// Inventory is the node inventory; nil uses clusterconfig.Default().
	Inventory *clusterconfig.Cluster
	// CRDDir is installed before anything else runs (config/crd/bases).
	CRDDir string
	// WorkerBinary, when set, runs worker pods as processes.
	WorkerBinary string
	// OperatorBinary, when set, runs the operator with OperatorArgs and
	// KUBECONFIG pointing at the cluster; its metrics and health endpoints
	// get free loopback ports unless OperatorArgs set them.
	OperatorBinary string
	OperatorArgs   []string
	// Backoff of crashed workers; zero uses the runtime's default.
	Backoff processruntime.Backoff
	// KwokConfigYAML replaces config/local/kwok.yaml.
	KwokConfigYAML []byte
	// Logf reports progress; nil is silent.
	Logf func(format string, args ...any)
}

// Cluster is a running local cluster.
type Cluster struct {
	WorkDir        string
	KubeconfigPath string
	Config         *rest.Config
	Client         kubernetes.Interface
	PodCIDRs       clusterconfig.PodCIDRs
	Nodes          []*corev1.Node
	// OperatorMetricsAddr is the operator's /metrics host:port.
	OperatorMetricsAddr string

	opts        Options
	tempWorkDir bool
	cp          *controlplane.ControlPlane
	kwok        *kwok.Kwok
	operator    *childproc.Process
	stopRuntime context.CancelFunc
	runtimeDone chan struct{}
	stopOnce    sync.Once
}

// Start brings the whole cluster up and returns once every node is Ready
// and schedulable. On error everything started is stopped.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
		opts.Logf = logf
	}
	inv := opts.Inventory
	if inv == nil {
		inv = clusterconfig.Default()
	}
	c := &Cluster{opts: opts, WorkDir: opts.WorkDir, PodCIDRs: clusterconfig.RandomPodCIDRs()}
	if c.WorkDir == "" {
		if c.WorkDir, err = os.MkdirTemp("", "mla-local-"); err != nil {
			return nil, err
		}
		c.tempWorkDir = true
	} else if err := os.MkdirAll(c.WorkDir, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	if c.Nodes, err = inv.Nodes(c.PodCIDRs); err != nil {
		return nil, err
	}

	var crdDirs []string
	if opts.CRDDir != "" {
		crdDirs = []string{opts.CRDDir}
	}
	c.cp, err = controlplane.Start(ctx, controlplane.Options{BinDir: opts.BinDir, WorkDir: c.WorkDir, CRDDirs: crdDirs, Logf: logf})
	if err != nil {
		return nil, err
	}
	c.Config, c.KubeconfigPath = rest.CopyConfig(c.cp.Config), c.cp.KubeconfigPath
	// Many workers report at once; client-side throttling would only hide
	// what the apiserver sees.
	c.Config.QPS, c.Config.Burst = 200, 400
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}

	logf("starting kwok with %d simulated GPU nodes", len(c.Nodes))
	c.kwok, err = kwok.Start(ctx, kwok.Options{Binary: filepath.Join(opts.BinDir, "kwok"), Kubeconfig: c.KubeconfigPath, WorkDir: c.WorkDir, PodCIDRs: c.PodCIDRs, ConfigYAML: opts.KwokConfigYAML})
	if err != nil {
		return nil, err
	}
	if err := c.createNodes(ctx); err != nil {
		return nil, err
	}
	if err := c.waitNodesSchedulable(ctx, 2*time.Minute+time.Duration(len(c.Nodes))*400*time.Millisecond); err != nil {
		return nil, err
	}

	if opts.WorkerBinary != "" {
		rt := processruntime.New(processruntime.Options{
			Client:       c.Client,
			WorkerBinary: opts.WorkerBinary,
			Kubeconfig:   c.KubeconfigPath,
			LogDir:       filepath.Join(c.WorkDir, "logs", "workers"),
			NodeSelector: labels.SelectorFromSet(labels.Set{clusterconfig.LabelSimulated: "true"}),
			Backoff:      opts.Backoff,
			Logf:         func(f string, a ...any) { logf("runtime: "+f, a...) },
		})
		rctx, cancel := context.WithCancel(context.Background())
		c.stopRuntime, c.runtimeDone = cancel, make(chan struct{})
		go func() {
			defer close(c.runtimeDone)
			if err := rt.Run(rctx); err != nil {
				logf("process runtime: %v", err)
			}
		}()
	}
	if opts.OperatorBinary != "" {
		logf("starting the operator")
		args, metrics, err := operatorArgs(opts.OperatorArgs)
		if err != nil {
			return nil, err
		}
		c.OperatorMetricsAddr = metrics
		env := append(os.Environ(), "KUBECONFIG="+c.KubeconfigPath)
		c.operator, err = childproc.Start(childproc.Spec{Name: "operator", Path: opts.OperatorBinary, Args: args,
			Env: env, LogPath: c.OperatorLogPath()})
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *Cluster) createNodes(ctx context.Context) error {
	for _, n := range c.Nodes {
		created, err := c.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("creating node %s: %w", n.Name, err)
		}
		// Status sent on create is kept for nodes, but make sure of the
		// capacity: kwok's node stage keeps whatever allocatable it finds.
		if _, ok := created.Status.Allocatable["nvidia.com/gpu"]; !ok {
			created.Status = n.Status
			if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("setting status of node %s: %w", n.Name, err)
			}
		}
	}
	return nil
}

// waitNodesSchedulable waits until every node is Ready and the node
// lifecycle controller has lifted the not-ready taint.
func (c *Cluster) waitNodesSchedulable(ctx context.Context, timeout time.Duration) error {
	var last string
	// Big clusters are polled less often, from the watch cache
	// (resourceVersion 0), so that waiting does not slow the apiserver that
	// kwok and the controller manager are busy with.
	interval := max(200*time.Millisecond, time.Duration(len(c.Nodes))*time.Millisecond)
	err := wait.PollUntilContextTimeout(ctx, interval, timeout, true, func(ctx context.Context) (bool, error) {
		if err := c.Healthy(); err != nil {
			return false, err
		}
		list, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: clusterconfig.LabelSimulated + "=true", ResourceVersion: "0"})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		ready, example := 0, ""
		for _, n := range list.Items {
			if Schedulable(&n) {
				ready++
			} else if example == "" {
				example = n.Name
			}
		}
		last = fmt.Sprintf("%d of %d schedulable", ready, len(c.Nodes))
		if example != "" {
			last += "; " + example + " is not ready or still tainted"
		}
		return ready == len(c.Nodes), nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %d nodes to become schedulable (%s): %w", len(c.Nodes), last, err)
	}
	return nil
}

// Schedulable is a node that is Ready and carries none of the taints a
// not-ready or unreachable node gets.
func Schedulable(n *corev1.Node) bool {
	ready := false
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	for _, t := range n.Spec.Taints {
		if t.Key == corev1.TaintNodeNotReady || t.Key == corev1.TaintNodeUnreachable {
			return false
		}
	}
	return ready && !n.Spec.Unschedulable
}

// Healthy reports a component that exited.
func (c *Cluster) Healthy() error {
	if c.cp != nil {
		if err := c.cp.Healthy(); err != nil {
			return err
		}
	}
	if c.kwok != nil {
		if err := c.kwok.Healthy(); err != nil {
			return err
		}
	}
	if c.operator != nil {
		select {
		case <-c.operator.Done():
			return fmt.Errorf("operator exited with code %d; see %s", c.operator.ExitCode(), c.OperatorLogPath())
		default:
		}
	}
	return nil
}

// OperatorLogPath is the operator's log file.
func (c *Cluster) OperatorLogPath() string { return filepath.Join(c.WorkDir, "logs", "operator.log") }

// WorkerLogPath is the log file of a worker pod's processes.
func (c *Cluster) WorkerLogPath(namespace, pod string) string {
	return filepath.Join(c.WorkDir, "logs", "workers", namespace, pod+".log")
}

// RecreateNode creates a deleted node again, as a node that rejoins.
func (c *Cluster) RecreateNode(ctx context.Context, name string) error {
	for _, n := range c.Nodes {
		if n.Name == name {
			_, err := c.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return nil
			}
			return err
		}
	}
	return fmt.Errorf("node %s is not in the inventory", name)
}

// Stop stops the operator (so it does not react to workers going away),
// every worker process, kwok and the control plane, and removes a temporary
// work dir. It is safe to call more than once.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		logf := c.opts.Logf
		if c.operator != nil {
			logf("stopping the operator")
			c.operator.Stop(5 * time.Second)
		}
		if c.stopRuntime != nil {
			logf("stopping worker processes")
			c.stopRuntime()
			<-c.runtimeDone
		}
		if c.kwok != nil {
			c.kwok.Stop()
		}
		if c.cp != nil {
			logf("stopping the control plane")
			if err := c.cp.Stop(); err != nil {
				logf("%v", err)
			}
		}
		if c.tempWorkDir {
			_ = os.RemoveAll(c.WorkDir)
		}
	})
}

// operatorArgs adds the operator's metrics and health endpoints on loopback
// ports of their own (unless args set them), so `make run` and the e2e tests
// can run side by side; it returns the metrics address.
func operatorArgs(args []string) ([]string, string, error) {
	metrics := ""
	has := func(flag string) bool {
		for _, a := range args {
			if v, ok := strings.CutPrefix(strings.TrimLeft(a, "-"), flag+"="); ok {
				if flag == "metrics-bind-address" {
					metrics = v
				}
				return true
			}
		}
		return false
	}
	out := append([]string(nil), args...)
	for _, flag := range []string{"metrics-bind-address", "health-probe-bind-address"} {
		if has(flag) {
			continue
		}
		addr, err := freeLoopbackAddr()
		if err != nil {
			return nil, "", err
		}
		if flag == "metrics-bind-address" {
			metrics = addr
		}
		out = append(out, "--"+flag+"="+addr)
	}
	return out, metrics, nil
}

// freeLoopbackAddr is a 127.0.0.1 port free right now.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}
