// Command mla-local runs the whole system on a local simulated GPU cluster
// (`make run`): a loopback control plane, kwok GPU nodes, real worker
// processes for worker pods, the operator and the sample services, with a
// live table of services, workers, nodes and capacity. Ctrl-C stops it all.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/localcluster"
	"github.com/mla-operator/mla-operator/internal/localcluster/clusterconfig"
	"github.com/mla-operator/mla-operator/internal/localcluster/livetable"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mla-local:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		binDir       = flag.String("bin-dir", "bin", "directory with etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubectl and kwok")
		operator     = flag.String("operator", "bin/operator", "operator binary; empty runs no operator")
		worker       = flag.String("worker", "bin/worker", "worker binary run for every worker pod")
		clusterFile  = flag.String("cluster", "", "node inventory YAML (default: config/local/cluster.yaml, built in)")
		crdDir       = flag.String("crds", "config/crd/bases", "CRDs to install")
		samples      = flag.String("samples", "config/samples", "kustomization applied once the operator runs; empty applies nothing")
		workDir      = flag.String("work-dir", "", "kubeconfig and logs go here (default: a new directory under $TMPDIR, kept after exit)")
		refresh      = flag.Duration("refresh", 2*time.Second, "live table refresh interval")
		noTable      = flag.Bool("no-table", false, "print progress only, no live table")
		operatorArgs stringList
	)
	flag.Var(&operatorArgs, "operator-arg", "extra operator argument (repeatable)")
	flag.Parse()

	inv := clusterconfig.Default()
	if *clusterFile != "" {
		var err error
		if inv, err = clusterconfig.Load(*clusterFile); err != nil {
			return err
		}
	}
	if *workDir == "" {
		dir, err := os.MkdirTemp("", "mla-local-")
		if err != nil {
			return err
		}
		*workDir = dir
	}
	for _, p := range []*string{binDir, operator, worker, crdDir, workDir} {
		if *p != "" {
			abs, err := filepath.Abs(*p)
			if err != nil {
				return err
			}
			*p = abs
		}
	}
	for _, b := range []string{*operator, *worker} {
		if b == "" {
			continue
		}
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%w (build it with `make build`)", err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A second Ctrl-C exits at once; children die with us (Pdeathsig).
	go func() {
		<-ctx.Done()
		stop()
		second := make(chan os.Signal, 1)
		signal.Notify(second, os.Interrupt, syscall.SIGTERM)
		<-second
		fmt.Fprintln(os.Stderr, "\nmla-local: interrupted again, exiting now")
		os.Exit(130)
	}()

	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format(time.TimeOnly), fmt.Sprintf(format, args...))
	}
	start := time.Now()
	logf("work dir %s", *workDir)
	cluster, err := localcluster.Start(ctx, localcluster.Options{
		BinDir:         *binDir,
		WorkDir:        *workDir,
		Inventory:      inv,
		CRDDir:         *crdDir,
		WorkerBinary:   *worker,
		OperatorBinary: *operator,
		OperatorArgs:   operatorArgs,
		Logf:           logf,
	})
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}
	defer func() {
		cluster.Stop()
		logf("stopped; logs are in %s", filepath.Join(*workDir, "logs"))
	}()
	logf("cluster up in %s: %d GPU nodes", time.Since(start).Round(100*time.Millisecond), len(cluster.Nodes))

	if *samples != "" {
		out, err := exec.CommandContext(ctx, filepath.Join(*binDir, "kubectl"), "--kubeconfig", cluster.KubeconfigPath, "apply", "-k", *samples).CombinedOutput()
		if err != nil {
			logf("applying samples from %s failed: %v\n%s", *samples, err, out)
		} else {
			logf("applied samples:\n%s", strings.TrimSpace(string(out)))
		}
	}

	header := fmt.Sprintf("mla-local: %d GPU nodes, logs in %s\n  export KUBECONFIG=%s\n  kubectl get mlaservices,pods -A    (Ctrl-C stops everything)\n",
		len(cluster.Nodes), filepath.Join(*workDir, "logs"), cluster.KubeconfigPath)
	if *noTable {
		fmt.Print(header)
		<-ctx.Done()
		return nil
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	c, err := client.New(cluster.Config, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	go watchHealth(ctx, cluster, logf, stop)
	livetable.Run(ctx, livetable.Options{
		Client:   c,
		Out:      os.Stdout,
		Interval: *refresh,
		Terminal: term.IsTerminal(int(os.Stdout.Fd())),
		Header:   header,
	})
	fmt.Println()
	return nil
}

// watchHealth stops everything when a component dies: a table of a dead
// cluster would only mislead.
func watchHealth(ctx context.Context, c *localcluster.Cluster, logf func(string, ...any), stop func()) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.Healthy(); err != nil {
				logf("%v: stopping", err)
				stop()
				return
			}
		}
	}
}
