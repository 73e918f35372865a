//go:build scale

// Package scale is the scale benchmark of the operator on the local
// simulated cluster (not part of make test):
//
//	go test -tags scale -run TestScale -timeout 30m -v ./test/e2e/scale/
//
// 1,000 kwok GPU nodes, 100 services of 10 workers each. kwok drives every
// pod (config/local/kwok-all-pods.yaml): no worker process runs; each
// worker's reports come from the worker's own reporting code (worker/report)
// with the capacity the model predicts for its node's GPU. It measures the
// time until every service is Ready, the operator's reconcile latency
// (controller_runtime_reconcile_time_seconds) and the apiserver requests per
// second of the reports and of the operator (its rest_client_requests_total).
// SCALE_NODES, SCALE_SERVICES and SCALE_REPLICAS shrink it for a quick run;
// SCALE_OPERATOR_ARGS adds operator flags (--max-concurrent-reconciles=4).
package scale

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/cache"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/config/local"
	"github.com/mla-operator/mla-operator/internal/capacity"
	"github.com/mla-operator/mla-operator/internal/localcluster"
	"github.com/mla-operator/mla-operator/internal/localcluster/clusterconfig"
	"github.com/mla-operator/mla-operator/internal/workerreport"
	"github.com/mla-operator/mla-operator/test/builders"
	"github.com/mla-operator/mla-operator/test/integration/framework"
	"github.com/mla-operator/mla-operator/worker/report"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// inventory spreads n nodes over the four GPU kinds of the default cluster.
func inventory(n int) *clusterconfig.Cluster {
	share := func(f float64) int { return max(1, int(float64(n)*f)) }
	h200, h100, a100 := share(0.25), share(0.4), share(0.25)
	l4 := max(1, n-h200-h100-a100)
	gpu := func(k builders.GPUKind, count int) clusterconfig.GPU {
		return clusterconfig.GPU{Product: k.Product, MemoryMiB: k.MemoryMiB, Count: count, ComputeCapability: fmt.Sprintf("%d.%d", k.ComputeMajor, k.ComputeMinor)}
	}
	return &clusterconfig.Cluster{Pools: []clusterconfig.Pool{
		{Name: "h200", Count: h200, Zone: "zone-a", GPU: gpu(builders.H200, 8)},
		{Name: "h100", Count: h100, Zone: "zone-a", GPU: gpu(builders.H100, 8)},
		{Name: "a100-40g", Count: a100, Zone: "zone-b", GPU: gpu(builders.A100_40G, 8)},
		{Name: "l4", Count: l4, Zone: "zone-b", GPU: gpu(builders.L4, 4)},
	}}
}

func freeLoopbackAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// countingPatcher counts the reports' apiserver writes.
type countingPatcher struct {
	client.Client
	n atomic.Int64
}

func (c *countingPatcher) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	c.n.Add(1)
	return c.Client.Patch(ctx, obj, patch, opts...)
}

func TestScale(t *testing.T) {
	log.SetLogger(logr.Discard())
	nodes, services, replicas := envInt("SCALE_NODES", 1000), envInt("SCALE_SERVICES", 100), envInt("SCALE_REPLICAS", 10)
	root, err := framework.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin")
	metricsAddr := freeLoopbackAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	start := time.Now()
	cluster, err := localcluster.Start(ctx, localcluster.Options{
		BinDir:         bin,
		Inventory:      inventory(nodes),
		CRDDir:         filepath.Join(root, "config", "crd", "bases"),
		KwokConfigYAML: local.KwokAllPodsYAML,
		OperatorBinary: filepath.Join(bin, "operator"),
		OperatorArgs:   append([]string{"--metrics-bind-address=" + metricsAddr}, strings.Fields(os.Getenv("SCALE_OPERATOR_ARGS"))...),
		Logf:           t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Stop()
	t.Logf("cluster with %d nodes up in %s", nodes, time.Since(start).Round(time.Second))
	// The simulated workers and their watches stop before the cluster does:
	// an apiserver with requests in flight is slow to shut down.
	workersCtx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()

	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	cfg := cluster.Config
	cfg.QPS, cfg.Burst = 1000, 2000
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	patcher := &countingPatcher{Client: c}

	// Simulated workers: a reporter per Running worker pod, with the
	// capacity the model gives its node's GPU.
	podCache, err := crcache.New(cfg, crcache.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	inf, err := podCache.GetInformer(workersCtx, &corev1.Pod{})
	if err != nil {
		t.Fatal(err)
	}
	nodeGPU := map[string]capacity.GPU{}
	for _, n := range cluster.Nodes {
		product, mib, _ := clusterconfig.GPUOf(n)
		nodeGPU[n.Name] = capacity.GPU{Product: product, MemoryBytes: mib * capacity.MiB}
	}
	var mu sync.Mutex
	reporting := map[types.UID]context.CancelFunc{}
	specOf := map[string]*v1alpha1.MLAServiceSpec{}
	startReporter := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.Labels[v1alpha1.LabelComponent] != v1alpha1.ComponentWorker || p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if reporting[p.UID] != nil {
			return
		}
		spec := specOf[p.Namespace+"/"+p.Labels[v1alpha1.LabelService]]
		if spec == nil {
			return
		}
		cc, err := capacity.FromSpec(spec)
		if err != nil {
			t.Errorf("capacity config: %v", err)
			return
		}
		e := cc.Estimate(nodeGPU[p.Spec.NodeName])
		rep := v1alpha1.Report{CapacityTokens: e.Tokens, MaxContextLength: e.MaxContextLength(), GPUProduct: e.GPU.Product, Device: "cpu", Ready: true}
		rctx, stop := context.WithCancel(workersCtx)
		reporting[p.UID] = stop
		r := report.New(patcher, types.NamespacedName{Namespace: p.Namespace, Name: p.Name}, report.SourceFunc(func() v1alpha1.Report { return rep }), report.Options{})
		go r.Run(rctx)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    startReporter,
		UpdateFunc: func(_, obj any) { startReporter(obj) },
		DeleteFunc: func(obj any) {
			if p, ok := obj.(*corev1.Pod); ok {
				mu.Lock()
				if stop := reporting[p.UID]; stop != nil {
					stop()
				}
				mu.Unlock()
			}
		},
	}); err != nil {
		t.Fatal(err)
	}
	go func() { _ = podCache.Start(workersCtx) }()
	podCache.WaitForCacheSync(workersCtx)

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "scale"}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	before := scrape(t, metricsAddr)
	applied := time.Now()
	for i := range services {
		svc := builders.MLAService("scale", fmt.Sprintf("svc-%03d", i)).Preset(v1alpha1.PresetDeepSeekV2Lite).Context(32768).Replicas(int32(replicas)).Obj()
		mu.Lock()
		specOf["scale/"+svc.Name] = &svc.Spec
		mu.Unlock()
		if err := c.Create(ctx, svc); err != nil {
			t.Fatalf("creating %s: %v", svc.Name, err)
		}
	}
	// Status of the created objects carries the defaults the reporters
	// size with; re-read them.
	var list v1alpha1.MLAServiceList
	if err := c.List(ctx, &list, client.InNamespace("scale")); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	for i := range list.Items {
		specOf["scale/"+list.Items[i].Name] = &list.Items[i].Spec
	}
	mu.Unlock()

	// Bounded: a run that does not get every service Ready still reports how
	// far it got and what the operator did meanwhile.
	readyTimeout := time.Duration(envInt("SCALE_READY_TIMEOUT_SECONDS", 600)) * time.Second
	var allReady time.Duration
	ready := 0
	for {
		if err := c.List(ctx, &list, client.InNamespace("scale")); err != nil {
			t.Fatal(err)
		}
		ready = 0
		for _, s := range list.Items {
			if cond := apimeta.FindStatusCondition(s.Status.Conditions, v1alpha1.ConditionReady); cond != nil && cond.Status == metav1.ConditionTrue && s.Status.ReadyReplicas == int32(replicas) {
				ready++
			}
		}
		allReady = time.Since(applied)
		if ready == services {
			break
		}
		if allReady > readyTimeout {
			t.Errorf("only %d of %d services Ready %s after creation", ready, services, readyTimeout)
			break
		}
		if err := cluster.Healthy(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
	}
	atReady := scrape(t, metricsAddr)
	reportsAtReady := patcher.n.Load()
	diagnose(t, ctx, c, list.Items, atReady)
	t.Logf("%d of %d services (%d workers) Ready %s after creation", ready, services, services*replicas, allReady.Round(100*time.Millisecond))

	// Steady state: reports by heartbeat only.
	const window = 90 * time.Second
	time.Sleep(window)
	after := scrape(t, metricsAddr)
	reportsSteady := patcher.n.Load() - reportsAtReady

	p50, p99 := quantile(after, "controller_runtime_reconcile_time_seconds", 0.5), quantile(after, "controller_runtime_reconcile_time_seconds", 0.99)
	opRollout := after.sum("rest_client_requests_total") - before.sum("rest_client_requests_total")
	opSteady := after.sum("rest_client_requests_total") - atReady.sum("rest_client_requests_total")
	t.Logf("RESULT nodes=%d services=%d workers=%d", nodes, services, services*replicas)
	t.Logf("RESULT %d of %d services ready after %s", ready, services, allReady.Round(100*time.Millisecond))
	t.Logf("RESULT reconcile latency p50=%s p99=%s (%.0f reconciles, %.0f in the work queue at the end)", p50, p99,
		after.sum("controller_runtime_reconcile_time_seconds_count"), after.sum("workqueue_depth"))
	t.Logf("RESULT rollout: reports %d writes (%.1f/s), operator %.0f requests (%.1f/s)", reportsAtReady, float64(reportsAtReady)/allReady.Seconds(), opRollout, opRollout/allReady.Seconds())
	t.Logf("RESULT steady %s: reports %.1f writes/s, operator %.1f requests/s", window, float64(reportsSteady)/window.Seconds(), opSteady/window.Seconds())
}

// diagnose logs what keeps services from Ready: nodes not Ready or tainted,
// worker pods not Ready, reports the operator does not count although the
// pod's own report is fresh, and the operator's work queue. svcs is the
// services as the wait for Ready last listed them.
func diagnose(t *testing.T, ctx context.Context, c client.Client, svcs []v1alpha1.MLAService, m metrics) {
	t.Helper()
	var nodes corev1.NodeList
	var pods corev1.PodList
	if err := c.List(ctx, &nodes); err != nil {
		t.Errorf("diagnose: %v", err)
		return
	}
	if err := c.List(ctx, &pods, client.InNamespace("scale")); err != nil {
		t.Errorf("diagnose: %v", err)
		return
	}
	now := time.Now()
	notReadyNodes, taintedNodes := 0, 0
	for _, n := range nodes.Items {
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status != corev1.ConditionTrue {
				notReadyNodes++
			}
		}
		if len(n.Spec.Taints) > 0 {
			taintedNodes++
		}
	}
	running, podNotReady, staleAnn, noReport := 0, 0, 0, 0
	var annAge []time.Duration
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Status.Phase == corev1.PodRunning {
			running++
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status != corev1.ConditionTrue {
				podNotReady++
			}
		}
		r, err := workerreport.Parse(p)
		switch {
		case err != nil: // malformed: counted in neither
		case r == nil:
			noReport++
		default:
			age := now.Sub(r.Time.Time)
			annAge = append(annAge, age)
			if age > workerreport.DefaultStaleAfter {
				staleAnn++
			}
		}
	}
	readyWorkers := 0
	var statusReportAge []time.Duration
	for _, s := range svcs {
		readyWorkers += int(s.Status.ReadyReplicas)
		for _, w := range s.Status.Workers {
			if w.LastReportTime != nil {
				statusReportAge = append(statusReportAge, now.Sub(w.LastReportTime.Time))
			}
		}
	}
	med := func(d []time.Duration) string {
		if len(d) == 0 {
			return "-"
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return fmt.Sprintf("p50 %s max %s", d[len(d)/2].Round(time.Second), d[len(d)-1].Round(time.Second))
	}
	t.Logf("DIAG nodes %d: %d not Ready, %d tainted", len(nodes.Items), notReadyNodes, taintedNodes)
	t.Logf("DIAG worker pods %d: %d Running, %d not Ready, %d without report, %d with report older than %s; report age on the pods %s",
		len(pods.Items), running, podNotReady, noReport, staleAnn, workerreport.DefaultStaleAfter, med(annAge))
	t.Logf("DIAG services: %d ready workers counted in status; report age in status %s", readyWorkers, med(statusReportAge))
	for _, name := range []string{"workqueue_adds_total", "workqueue_retries_total", "workqueue_depth", "workqueue_unfinished_work_seconds",
		"controller_runtime_reconcile_total", "controller_runtime_reconcile_errors_total", "mla_operator_node_changes_total",
		"rest_client_requests_total"} {
		for _, k := range m.series(name) {
			t.Logf("DIAG %s %g", k, m[k])
		}
	}
}

// metrics is a Prometheus text scrape: series -> value.
type metrics map[string]float64

// series is the metric's series (the bare name and every label set),
// sorted.
func (m metrics) series(name string) []string {
	var keys []string
	for k := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

func (m metrics) sum(name string) float64 {
	var s float64
	for _, k := range m.series(name) {
		s += m[k]
	}
	return s
}

func scrape(t *testing.T, addr string) metrics {
	t.Helper()
	var resp *http.Response
	var err error
	for range 60 {
		if resp, err = http.Get("http://" + addr + "/metrics"); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		t.Fatalf("scraping the operator's metrics at %s: %v", addr, err)
	}
	defer resp.Body.Close()
	m := metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			m[line[:i]] = v
		}
	}
	return m
}

// quantile estimates a quantile of a histogram summed over its label sets,
// interpolating linearly inside the bucket, as PromQL's histogram_quantile.
func quantile(m metrics, name string, q float64) time.Duration {
	buckets := map[float64]float64{}
	for k, v := range m {
		if !strings.HasPrefix(k, name+"_bucket{") {
			continue
		}
		i := strings.Index(k, `le="`)
		if i < 0 {
			continue
		}
		leStr := k[i+4:]
		leStr = leStr[:strings.IndexByte(leStr, '"')]
		le, err := strconv.ParseFloat(leStr, 64)
		if err != nil {
			continue
		}
		buckets[le] += v
	}
	var les []float64
	for le := range buckets {
		les = append(les, le)
	}
	sort.Float64s(les)
	if len(les) == 0 {
		return 0
	}
	total := buckets[les[len(les)-1]]
	rank := q * total
	prevLe, prevCount := 0.0, 0.0
	for _, le := range les {
		if buckets[le] >= rank {
			if le > 1e300 { // +Inf
				return time.Duration(prevLe * float64(time.Second))
			}
			frac := 0.0
			if buckets[le] > prevCount {
				frac = (rank - prevCount) / (buckets[le] - prevCount)
			}
			return time.Duration((prevLe + (le-prevLe)*frac) * float64(time.Second))
		}
		prevLe, prevCount = le, buckets[le]
	}
	return 0
}
