// Command operator runs the MLAService controller: it places MLA worker
// pods on GPU nodes by KV-cache capacity, keeps them running, aggregates
// their capacity reports into status and autoscales on KV utilization.
//
// It runs in the cluster (in-cluster config) or beside it with --kubeconfig.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/controllers"
	"github.com/mla-operator/mla-operator/internal/workerreport"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "operator:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		metricsAddr      string
		probeAddr        string
		pprofAddr        string
		leaderElect      bool
		leaderElectionNS string
		opts             controllers.Options
	)
	fs := flag.CommandLine
	// --kubeconfig is controller-runtime's flag (pkg/client/config): a path,
	// else $KUBECONFIG, the in-cluster config or ~/.kube/config.
	fs.StringVar(&metricsAddr, "metrics-bind-address", "127.0.0.1:9090", "address of the Prometheus /metrics endpoint (in a pod, :8443 or another all-interfaces address); 0 turns it off")
	fs.StringVar(&probeAddr, "health-probe-bind-address", "127.0.0.1:8081", "address of the /healthz and /readyz endpoints (in a pod, :8081 so the kubelet reaches them)")
	fs.StringVar(&pprofAddr, "pprof-bind-address", "", "address of Go's /debug/pprof endpoints for profiling the operator (127.0.0.1:6060); empty or 0 turns them off")
	fs.BoolVar(&leaderElect, "leader-elect", false, "elect a leader through a Lease so that only one of several replicas reconciles")
	fs.StringVar(&leaderElectionNS, "leader-election-namespace", "", "namespace of the leader-election Lease; empty uses the operator's own namespace")
	fs.DurationVar(&opts.ReportStaleAfter, "report-stale-after", workerreport.DefaultStaleAfter,
		"how old a worker's capacity report may be and still count, by the operator's clock from when it saw the report change (workers report about every 30s)")
	fs.DurationVar(&opts.NodeLostGrace, "node-lost-grace", controllers.DefaultNodeLostGrace,
		"how long a node may stay NotReady before its workers are placed elsewhere")
	fs.DurationVar(&opts.UnschedulableGrace, "unschedulable-grace", controllers.DefaultUnschedulableGrace,
		"how long the scheduler may refuse to bind a worker to its chosen node before the worker is placed again")
	fs.DurationVar(&opts.UnplacedRetry, "unplaced-retry", controllers.DefaultUnplacedRetry,
		"how soon to retry placing workers that found no node")
	fs.IntVar(&opts.MaxConcurrentReconciles, "max-concurrent-reconciles", 1, "MLAServices reconciled in parallel")
	zapOpts := zap.Options{Development: false}
	zapOpts.BindFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s [flags]\n\n"+
			"Runs the MLAService controller: places MLA worker pods on GPU nodes by KV-cache capacity,\n"+
			"keeps them running, writes their reported capacity into status and autoscales on KV utilization.\n\nFlags:\n", os.Args[0])
		fs.PrintDefaults()
	}
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("finding the cluster (pass --kubeconfig): %w", err)
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:  probeAddr,
		PprofBindAddress:        pprofAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "mla-operator.inference.mla.dev",
		LeaderElectionNamespace: leaderElectionNS,
		// A new leader starts at once when the old one stops cleanly.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}
	if err := controllers.NewReconciler(mgr, opts).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the MLAService controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	// Ready once the informer caches have synced.
	if err := mgr.AddReadyzCheck("readyz", func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return fmt.Errorf("caches not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	ctrl.Log.WithName("setup").Info("starting", "leaderElection", leaderElect, "metrics", metricsAddr, "probes", probeAddr, "pprof", pprofAddr)
	return mgr.Start(ctrl.SetupSignalHandler())
}
