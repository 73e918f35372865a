package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/controllers"
	"github.com/mla-operator/mla-operator/test/builders"
)

// BenchmarkReconcileEnvtest measures one reconcile of an MLAService against
// the envtest apiserver through the manager's informer cache, in a cluster
// of 1,000 GPU nodes (four kinds, three zones) and 100 services of 4
// workers each (400 worker pods), every worker Ready and reporting. A
// reconcile lists nodes and pods from the cache, surveys placement, plans,
// aggregates and writes status (a no-op write is skipped after a read).
func BenchmarkReconcileEnvtest(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	quietLogs.Do(func() {})
	mgr, err := ctrl.NewManager(testEnv.Config, ctrl.Options{Scheme: testEnv.Scheme,
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Controller: config.Controller{SkipNameValidation: ptr.To(true)}})
	if err != nil {
		b.Fatal(err)
	}
	// Reports stay fresh for the whole run: the operator ages them by its
	// own clock from when it first sees them, so a bound of an hour does
	// (a report dated an hour ahead no longer would).
	r := controllers.NewReconciler(mgr, controllers.Options{ReportStaleAfter: time.Hour})
	go func() { _ = mgr.Start(ctx) }()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		b.Fatal("cache did not sync")
	}
	c := testEnv.Client
	run := fmt.Sprintf("bench-%d", time.Now().UnixNano()%100000)
	kinds := []builders.GPUKind{builders.H200, builders.H100, builders.A100_40G, builders.L4}
	var nodes []*corev1.Node
	for i := range 1000 {
		n := builders.GPUNode(fmt.Sprintf("%s-node-%04d", run, i), kinds[i%4], 8).Zone(fmt.Sprintf("zone-%d", i%3)).Label("bench", run).Obj()
		if err := c.Create(ctx, n); err != nil {
			b.Fatal(err)
		}
		n.Spec.Taints = nil // admission's not-ready taint; no node controller removes it here
		if err := c.Update(ctx, n); err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	defer func() {
		for _, n := range nodes {
			_ = c.Delete(context.Background(), n)
		}
	}()
	var keys []types.NamespacedName
	strategies := []v1alpha1.PlacementStrategy{v1alpha1.MostCapacity, v1alpha1.BinPack, v1alpha1.Spread}
	for i := range 10 {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", run, i)}}
		if err := c.Create(ctx, ns); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = c.Delete(context.Background(), ns) }()
	}
	for i := range 100 {
		svc := builders.MLAService(fmt.Sprintf("%s-%d", run, i%10), fmt.Sprintf("svc-%d", i)).Replicas(4).
			Strategy(strategies[i%3]).Context(int64(4096*(1+i%8))).NodeSelector("bench", run).Obj()
		if err := c.Create(ctx, svc); err != nil {
			b.Fatal(err)
		}
		keys = append(keys, client.ObjectKeyFromObject(svc))
	}
	// Let the cache see the cluster, then create every service's workers.
	waitCached(b, mgr.GetClient(), 1000, len(keys))
	for _, k := range keys {
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: k}); err != nil {
			b.Fatal(err)
		}
	}
	raw, _ := json.Marshal(v1alpha1.Report{CapacityTokens: 100000, UsedTokens: 30000, ActiveSequences: 3, MaxContextLength: 100000,
		Ready: true, Time: metav1.NewTime(time.Now())})
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.MatchingLabels{v1alpha1.LabelComponent: v1alpha1.ComponentWorker}); err != nil {
		b.Fatal(err)
	}
	workers := 0
	for i := range pods.Items {
		p := &pods.Items[i]
		if !strings.HasPrefix(p.Namespace, run) {
			continue
		}
		workers++
		p.Annotations[v1alpha1.AnnotationReport] = string(raw)
		if err := c.Update(ctx, p); err != nil {
			b.Fatal(err)
		}
		if err := markReady(ctx, p); err != nil {
			b.Fatal(err)
		}
	}
	if workers != 400 {
		b.Fatalf("%d workers, want 400", workers)
	}
	// One round so every status is current, then measure.
	time.Sleep(2 * time.Second)
	for _, k := range keys {
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: k}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: keys[i%len(keys)]}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func waitCached(b *testing.B, cached client.Client, nodes, services int) {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		var nl corev1.NodeList
		var sl v1alpha1.MLAServiceList
		if cached.List(context.Background(), &nl) == nil && cached.List(context.Background(), &sl) == nil &&
			len(nl.Items) >= nodes && len(sl.Items) >= services {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Fatal("cache did not catch up")
}
