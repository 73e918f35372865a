package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/test/builders"
	"github.com/mla-operator/mla-operator/test/integration/framework"
	"github.com/mla-operator/mla-operator/worker/report"
)

// workerState is a report source the test moves.
type workerState struct {
	mu  sync.Mutex
	rep v1alpha1.Report
}

func (w *workerState) Report() v1alpha1.Report {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rep
}

func (w *workerState) update(f func(*v1alpha1.Report)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(&w.rep)
}

// createWorkerPod creates a worker pod object; envtest has no kubelet, so it
// never runs, which the reporter does not care about.
func createWorkerPod(t *testing.T, c client.Client, ns, name string) types.NamespacedName {
	t.Helper()
	if err := c.Create(context.Background(), builders.Pod(ns, name).WorkerOf("svc").Obj()); err != nil {
		t.Fatalf("creating pod %s: %v", name, err)
	}
	return types.NamespacedName{Namespace: ns, Name: name}
}

func readPodReport(c client.Client, key types.NamespacedName) (v1alpha1.Report, string, error) {
	var pod corev1.Pod
	if err := c.Get(context.Background(), key, &pod); err != nil {
		return v1alpha1.Report{}, "", err
	}
	rep, ok, err := report.Parse(pod.Annotations)
	if err != nil {
		return v1alpha1.Report{}, "", err
	}
	if !ok {
		return v1alpha1.Report{}, "", fmt.Errorf("pod %s has no report yet", key)
	}
	return rep, pod.ResourceVersion, nil
}

// workerClient impersonates the workers' service account bound to
// config/rbac/worker_role.yaml, so these tests prove the Role is enough.
func workerClient(t *testing.T, ns string) client.Client {
	t.Helper()
	ctx := context.Background()
	raw, err := os.ReadFile(filepath.Join(testEnv.Root, "config", "rbac", "worker_role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.Role
	if err := yaml.UnmarshalStrict(raw, &role); err != nil {
		t.Fatalf("worker_role.yaml: %v", err)
	}
	role.Namespace = ns
	if err := testEnv.Client.Create(ctx, &role); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{}
	binding.Namespace, binding.Name = ns, "mla-worker"
	binding.RoleRef = rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name}
	binding.Subjects = []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "mla-worker", Namespace: ns}}
	if err := testEnv.Client.Create(ctx, binding); err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(testEnv.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":mla-worker"}
	c, err := client.New(cfg, client.Options{Scheme: testEnv.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestReportAppearsUpdatesAndHeartbeats(t *testing.T) {
	ns := testEnv.Namespace(t)
	c := workerClient(t, ns)
	key := createWorkerPod(t, testEnv.Client, ns, "worker-0")
	state := &workerState{rep: v1alpha1.Report{CapacityTokens: 1_395_584, MaxContextLength: 163_840,
		GPUProduct: "NVIDIA-H100-80GB-HBM3", Device: "cpu", Ready: true}}
	rep := report.New(c, key, state, report.Options{Poll: 20 * time.Millisecond, MinInterval: 100 * time.Millisecond,
		Heartbeat: 2 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rep.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	framework.Eventually(t, 10*time.Second, func() error {
		got, _, err := readPodReport(testEnv.Client, key)
		if err == nil && (got.CapacityTokens != 1_395_584 || !got.Ready || got.GPUProduct != "NVIDIA-H100-80GB-HBM3") {
			err = fmt.Errorf("report %+v", got)
		}
		return err
	})

	// A material change is written at once (well within the heartbeat).
	state.update(func(r *v1alpha1.Report) { r.ActiveSequences, r.UsedTokens = 3, 300_000 })
	start := time.Now()
	framework.Eventually(t, 10*time.Second, func() error {
		got, _, err := readPodReport(testEnv.Client, key)
		if err == nil && (got.ActiveSequences != 3 || got.UsedTokens != 300_000) {
			err = fmt.Errorf("report %+v", got)
		}
		return err
	})
	if waited := time.Since(start); waited > 1500*time.Millisecond {
		t.Errorf("material change took %v to appear; the heartbeat is 2s", waited)
	}

	// Without change, the heartbeat rewrites the report with a newer time.
	before, rv, err := readPodReport(testEnv.Client, key)
	if err != nil {
		t.Fatal(err)
	}
	framework.Eventually(t, 10*time.Second, func() error {
		got, newRV, err := readPodReport(testEnv.Client, key)
		if err == nil && (newRV == rv || !got.Time.After(before.Time.Time)) {
			err = fmt.Errorf("no heartbeat yet: time %v, resourceVersion %s", got.Time, newRV)
		}
		return err
	})

	// Draining is written at once too.
	state.update(func(r *v1alpha1.Report) { r.Ready, r.Draining = false, true })
	framework.Eventually(t, 10*time.Second, func() error {
		got, _, err := readPodReport(testEnv.Client, key)
		if err == nil && (got.Ready || !got.Draining) {
			err = fmt.Errorf("report %+v", got)
		}
		return err
	})
}

func TestWorkerRoleIsLeastPrivilege(t *testing.T) {
	ns := testEnv.Namespace(t)
	other := testEnv.Namespace(t)
	c := workerClient(t, ns)
	own := createWorkerPod(t, testEnv.Client, ns, "worker-0")
	foreign := createWorkerPod(t, testEnv.Client, other, "worker-0")
	ctx := context.Background()

	if err := report.New(c, own, report.SourceFunc(func() v1alpha1.Report { return v1alpha1.Report{Ready: true} }),
		report.Options{}).Write(ctx, v1alpha1.Report{Ready: true}); err != nil {
		t.Fatalf("worker identity cannot report on a pod of its namespace: %v", err)
	}
	err := report.New(c, foreign, &workerState{}, report.Options{}).Write(ctx, v1alpha1.Report{Ready: true})
	if !apierrors.IsForbidden(err) {
		t.Errorf("report into another namespace = %v, want forbidden", err)
	}
	if err := c.List(ctx, &corev1.PodList{}, client.InNamespace(ns)); !apierrors.IsForbidden(err) {
		t.Errorf("listing pods = %v, want forbidden", err)
	}
	if err := c.Delete(ctx, builders.Pod(ns, own.Name).Obj()); !apierrors.IsForbidden(err) {
		t.Errorf("deleting a pod = %v, want forbidden", err)
	}
}

// TestManyWorkersLoseNoReport runs 64 workers' reporters at once, each
// writing a series of reports to its own pod, and checks that every write
// succeeded and every pod holds its worker's last report.
func TestManyWorkersLoseNoReport(t *testing.T) {
	const workers, reportsEach = 64, 8
	ns := testEnv.Namespace(t)
	c := workerClient(t, ns)
	keys := make([]types.NamespacedName, workers)
	for i := range keys {
		keys[i] = createWorkerPod(t, testEnv.Client, ns, fmt.Sprintf("worker-%02d", i))
	}
	var failures atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i, key := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			state := &workerState{rep: v1alpha1.Report{CapacityTokens: int64(1000 * (i + 1)), Ready: true}}
			// MinInterval 0 is replaced by the default; a tiny one lets
			// every change through as a real worker's would over time.
			rep := report.New(c, key, state, report.Options{MinInterval: time.Nanosecond, Heartbeat: time.Hour})
			for n := 1; n <= reportsEach; n++ {
				state.update(func(r *v1alpha1.Report) { r.ActiveSequences = int32(n) })
				wrote, err := rep.Sync(ctx)
				if err != nil || !wrote {
					failures.Add(1)
					t.Errorf("worker %d report %d: wrote=%v err=%v", i, n, wrote, err)
				}
			}
		}()
	}
	wg.Wait()
	if failures.Load() > 0 {
		t.Fatalf("%d of %d reports failed", failures.Load(), workers*reportsEach)
	}
	for i, key := range keys {
		got, _, err := readPodReport(testEnv.Client, key)
		if err != nil {
			t.Fatal(err)
		}
		if got.ActiveSequences != reportsEach || got.CapacityTokens != int64(1000*(i+1)) {
			t.Errorf("pod %s holds %+v, want its worker's last report", key.Name, got)
		}
	}
}
