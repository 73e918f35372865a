package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/controllers"
	"github.com/mla-operator/mla-operator/internal/nodeinfo"
	"github.com/mla-operator/mla-operator/test/builders"
	"github.com/mla-operator/mla-operator/test/integration/framework"
)

var quietLogs sync.Once

// startOperator runs the MLAService controller in-process against the test
// apiserver, watching only ns (nodes are cluster-wide), until t ends.
func startOperator(t *testing.T, ns string, opts controllers.Options) {
	t.Helper()
	quietLogs.Do(func() { ctrl.SetLogger(zap.New(zap.WriteTo(io.Discard))) })
	mgr, err := ctrl.NewManager(testEnv.Config, ctrl.Options{
		Scheme:                 testEnv.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}},
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := controllers.NewReconciler(mgr, opts).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("operator: %v", err)
		}
	})
}

// createNodes creates GPU nodes labelled test=<ns> (services select them
// with that label, so tests never see each other's nodes) and deletes them
// when t ends.
func createNodes(t *testing.T, ns string, nodes ...*builders.NodeBuilder) {
	t.Helper()
	for _, b := range nodes {
		n := b.Label("test", ns).Obj()
		n.Name = ns + "-" + n.Name
		n.Labels[corev1.LabelHostname] = n.Name
		want := n.Spec.Taints
		if err := testEnv.Client.Create(context.Background(), n); err != nil {
			t.Fatalf("creating node %s: %v", n.Name, err)
		}
		// Admission taints new nodes not-ready until the node lifecycle
		// controller, which envtest lacks, sees them Ready.
		if len(n.Spec.Taints) != len(want) {
			n.Spec.Taints = want
			if err := testEnv.Client.Update(context.Background(), n); err != nil {
				t.Fatalf("untainting node %s: %v", n.Name, err)
			}
		}
		t.Cleanup(func() { _ = testEnv.Client.Delete(context.Background(), n) })
	}
}

// createService creates svc, selecting the test's nodes.
func createService(t *testing.T, svc *builders.MLAServiceBuilder, ns string) *v1alpha1.MLAService {
	t.Helper()
	obj := svc.NodeSelector("test", ns).Obj()
	obj.Namespace = ns
	if err := testEnv.Client.Create(context.Background(), obj); err != nil {
		t.Fatalf("creating service: %v", err)
	}
	return obj
}

func workerPods(t *testing.T, ns string) []corev1.Pod {
	t.Helper()
	var list corev1.PodList
	if err := testEnv.Client.List(context.Background(), &list, client.InNamespace(ns),
		client.MatchingLabels{v1alpha1.LabelComponent: v1alpha1.ComponentWorker}); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// waitWorkerPods waits until the namespace holds n worker pods and returns
// them.
func waitWorkerPods(t *testing.T, ns string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	eventually(t, func() error {
		if pods = workerPods(t, ns); len(pods) != n {
			return fmt.Errorf("%d worker pods, want %d", len(pods), n)
		}
		return nil
	})
	return pods
}

// reportStaleAfter is the operator's staleness bound in the report tests:
// short, so that they see reports go stale.
const reportStaleAfter = 8 * time.Second

// startReportingService starts, in a fresh namespace with one H100 node, an
// operator that counts reports for reportStaleAfter and a service of the
// given replicas, and returns the namespace and the service's worker pods.
func startReportingService(t *testing.T, name string, replicas int32) (string, []corev1.Pod) {
	t.Helper()
	ns := testEnv.Namespace(t)
	createNodes(t, ns, builders.GPUNode("a", builders.H100, 8))
	startOperator(t, ns, controllers.Options{ReportStaleAfter: reportStaleAfter})
	createService(t, builders.MLAService(ns, name).Replicas(replicas), ns)
	return ns, waitWorkerPods(t, ns, int(replicas))
}

// waitCounted waits until the service's status counts ready workers
// holding tokens of KV cache capacity in all.
func waitCounted(t *testing.T, ns, name string, ready int32, tokens int64) {
	t.Helper()
	eventually(t, func() error {
		s := getService(t, ns, name)
		if s.Status.ReadyReplicas != ready || s.Status.KVCache.CapacityTokens != tokens {
			return fmt.Errorf("%d ready workers and %d tokens counted, want %d and %d; kvCache %+v",
				s.Status.ReadyReplicas, s.Status.KVCache.CapacityTokens, ready, tokens, s.Status.KVCache)
		}
		return nil
	})
}

func getService(t *testing.T, ns, name string) *v1alpha1.MLAService {
	t.Helper()
	var svc v1alpha1.MLAService
	if err := testEnv.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &svc); err != nil {
		t.Fatal(err)
	}
	return &svc
}

// nodesOf counts pods per node, the test's namespace prefix removed.
func nodesOf(ns string, pods []corev1.Pod) map[string]int {
	out := map[string]int{}
	for i := range pods {
		if pods[i].DeletionTimestamp == nil {
			out[nodeinfo.PinnedNode(&pods[i])[len(ns)+1:]]++
		}
	}
	return out
}

func condition(svc *v1alpha1.MLAService, t string) *metav1.Condition {
	return meta.FindStatusCondition(svc.Status.Conditions, t)
}

// kubelet stands in for the kubelets envtest lacks: it marks every live
// worker pod of a namespace Running and Ready and writes a fresh report on
// it, as the worker would, with capacity as predicted and used tokens at
// load x capacity.
type kubelet struct {
	ns   string
	mu   sync.Mutex
	load float64
	// readyAfter delays readiness of a new pod, like a worker's start-up.
	readyAfter time.Duration
	seen       map[string]time.Time
}

func (k *kubelet) setLoad(l float64) {
	k.mu.Lock()
	k.load = l
	k.mu.Unlock()
}

func startKubelet(t *testing.T, ns string, readyAfter time.Duration) *kubelet {
	k := &kubelet{ns: ns, readyAfter: readyAfter, seen: map[string]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			k.tick(ctx)
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return k
}

func (k *kubelet) tick(ctx context.Context) {
	var list corev1.PodList
	if err := testEnv.Client.List(ctx, &list, client.InNamespace(k.ns)); err != nil {
		return
	}
	k.mu.Lock()
	load := k.load
	k.mu.Unlock()
	now := time.Now()
	for i := range list.Items {
		pod := &list.Items[i]
		if pod.DeletionTimestamp != nil {
			continue
		}
		first, ok := k.seen[pod.Name+string(pod.UID)]
		if !ok {
			k.seen[pod.Name+string(pod.UID)] = now
			first = now
		}
		if now.Sub(first) < k.readyAfter {
			continue
		}
		predicted, _ := strconv.ParseInt(pod.Annotations[v1alpha1.AnnotationPredictedTokens], 10, 64)
		report := v1alpha1.Report{CapacityTokens: predicted, UsedTokens: int64(load * float64(predicted)),
			ActiveSequences: int32(load * 10), MaxContextLength: predicted, GPUProduct: pod.Annotations[v1alpha1.AnnotationGPUProduct],
			Device: "cpu", Ready: true, Time: metav1.NewTime(now)}
		setReport(ctx, pod, report)
		if !podReady(pod) {
			markReady(ctx, pod)
		}
	}
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// markReady sets the pod Running and Ready, as a kubelet would.
func markReady(ctx context.Context, pod *corev1.Pod) error {
	p := pod.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = "127.0.0.1"
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	if err := testEnv.Client.Status().Update(ctx, p); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("marking %s ready: %w", pod.Name, err)
	}
	return nil
}

// setReport writes a worker report on the pod, as the worker would.
func setReport(ctx context.Context, pod *corev1.Pod, r v1alpha1.Report) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{v1alpha1.AnnotationReport: string(raw)}}})
	if err := testEnv.Client.Patch(ctx, pod, client.RawPatch("application/merge-patch+json", patch)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("reporting on %s: %w", pod.Name, err)
	}
	return nil
}

// eventually polls cond until it holds or the (generous, loaded-machine)
// timeout passes.
func eventually(t *testing.T, cond func() error) {
	t.Helper()
	framework.Eventually(t, 60*time.Second, cond)
}

func clientKey(name string) client.ObjectKey { return client.ObjectKey{Name: name} }
