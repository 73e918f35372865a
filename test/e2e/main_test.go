// Package e2e runs the whole system on the local simulated GPU cluster (the
// one `make run` starts) and drives it with kubectl: one cluster per test
// binary, each test in its own namespace with its own service.
//
// The tests need bin/ to hold the control-plane binaries, kwok, the
// operator and the worker; `make test` builds them first. A missing binary
// fails the suite rather than skipping it.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/capacity"
	"github.com/mla-operator/mla-operator/internal/localcluster"
	"github.com/mla-operator/mla-operator/internal/localcluster/clusterconfig"
	"github.com/mla-operator/mla-operator/test/integration/framework"
)

var (
	cluster *localcluster.Cluster
	k8s     client.Client
	root    string
	binDir  string
)

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	var err error
	if root, err = framework.RepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	binDir = os.Getenv("KUBEBUILDER_ASSETS")
	if binDir == "" {
		binDir = filepath.Join(root, "bin")
	}
	for _, b := range []string{"operator", "worker", "kwok", "kubectl"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s missing in %s: run `make bins build` (make test does): %v\n", b, binDir, err)
			return 1
		}
	}
	detectWorkerFlags()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	verbose := os.Getenv("E2E_VERBOSE") != ""
	cluster, err = localcluster.Start(ctx, localcluster.Options{
		BinDir:         binDir,
		WorkDir:        os.Getenv("E2E_WORK_DIR"),
		Inventory:      clusterconfig.Default(),
		CRDDir:         filepath.Join(root, "config", "crd", "bases"),
		WorkerBinary:   filepath.Join(binDir, "worker"),
		OperatorBinary: filepath.Join(binDir, "operator"),
		Logf: func(f string, a ...any) {
			if verbose || !strings.HasPrefix(f, "runtime: ") {
				fmt.Fprintf(os.Stderr, "e2e cluster: "+f+"\n", a...)
			}
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: starting the local cluster:", err)
		return 1
	}
	defer cluster.Stop()
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	if k8s, err = client.New(cluster.Config, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: client:", err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "e2e: failed; operator log tail:\n%s\n", tail(cluster.OperatorLogPath(), 40))
	}
	return code
}

// tail is the last n lines of a file, for failure messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// kubectl runs bin/kubectl against the cluster with stdin.
func kubectl(ctx context.Context, stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "kubectl"), append([]string{"--kubeconfig", cluster.KubeconfigPath}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// mustKubectl fails t when kubectl fails.
func mustKubectl(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := kubectl(ctx, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// namespace makes a namespace for t, deleted when t ends.
func namespace(t *testing.T) string {
	t.Helper()
	name := strings.Trim(strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())), "-")
	if len(name) > 40 {
		name = name[:40]
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: strings.Trim(name, "-") + "-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dump(t, ns.Name)
		}
		_ = k8s.Delete(context.Background(), ns)
	})
	return ns.Name
}

// dump logs what a person would look at when a test fails.
func dump(t *testing.T, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, _ := kubectl(ctx, nil, "-n", ns, "get", "mlaservices,pods", "-o", "wide")
	t.Logf("namespace %s:\n%s", ns, out)
	out, _ = kubectl(ctx, nil, "-n", ns, "get", "mlaservices", "-o", "jsonpath={range .items[*]}{.metadata.name}: {.status}{\"\\n\"}{end}")
	t.Logf("service status:\n%s", out)
	var pods corev1.PodList
	if err := k8s.List(ctx, &pods, client.InNamespace(ns)); err == nil {
		for _, p := range pods.Items {
			t.Logf("worker %s log tail:\n%s", p.Name, tail(cluster.WorkerLogPath(ns, p.Name), 15))
		}
	}
}

// apply applies obj with kubectl (server-side validation, CEL included).
func apply(t *testing.T, obj any) {
	t.Helper()
	data, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	mustKubectl(t, data, "apply", "-f", "-")
}

// eventually polls cond every 250 ms until it returns nil, failing t with
// the last error after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		if herr := cluster.Healthy(); herr != nil {
			t.Fatalf("%s: %v", what, herr)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func getService(t *testing.T, ns, name string) *v1alpha1.MLAService {
	t.Helper()
	var svc v1alpha1.MLAService
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &svc); err != nil {
		t.Fatalf("getting service %s/%s: %v", ns, name, err)
	}
	return &svc
}

// workers lists the worker pods of a service that are not being deleted.
func workers(t *testing.T, ns, svc string) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := k8s.List(context.Background(), &pods, client.InNamespace(ns), client.MatchingLabels{v1alpha1.LabelService: svc}); err != nil {
		t.Fatalf("listing workers: %v", err)
	}
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	return live
}

func conditionIs(svc *v1alpha1.MLAService, typ string, status metav1.ConditionStatus) error {
	c := apimeta.FindStatusCondition(svc.Status.Conditions, typ)
	if c == nil {
		return fmt.Errorf("no %s condition (conditions %v)", typ, svc.Status.Conditions)
	}
	if c.Status != status {
		return fmt.Errorf("%s is %s (%s: %s), want %s", typ, c.Status, c.Reason, c.Message, status)
	}
	if svc.Status.ObservedGeneration != svc.Generation {
		return fmt.Errorf("status is of generation %d, spec is at %d", svc.Status.ObservedGeneration, svc.Generation)
	}
	return nil
}

// readyWith waits until the service is Ready with exactly n ready workers
// and returns it.
func readyWith(t *testing.T, ns, name string, n int32, timeout time.Duration) *v1alpha1.MLAService {
	t.Helper()
	var svc *v1alpha1.MLAService
	eventually(t, timeout, fmt.Sprintf("service %s ready with %d workers", name, n), func() error {
		svc = getService(t, ns, name)
		if err := conditionIs(svc, v1alpha1.ConditionReady, metav1.ConditionTrue); err != nil {
			return err
		}
		if svc.Status.ReadyReplicas != n || svc.Status.Replicas != n {
			return fmt.Errorf("%d ready of %d workers, want %d", svc.Status.ReadyReplicas, svc.Status.Replicas, n)
		}
		return statusMatchesPods(t, svc)
	})
	return svc
}

// statusMatchesPods checks that the status lists exactly the live worker
// pods, each ready: a status written before the last change of pods cannot
// pass for the outcome of that change.
func statusMatchesPods(t *testing.T, svc *v1alpha1.MLAService) error {
	live := map[string]bool{}
	for _, p := range workers(t, svc.Namespace, svc.Name) {
		live[p.Name] = true
	}
	if len(svc.Status.Workers) != len(live) {
		return fmt.Errorf("status lists %d workers, %d worker pods are live", len(svc.Status.Workers), len(live))
	}
	for _, w := range svc.Status.Workers {
		if !live[w.Pod] {
			return fmt.Errorf("status lists worker %s, which is gone or terminating", w.Pod)
		}
		if !w.Ready {
			return fmt.Errorf("worker %s not ready in status", w.Pod)
		}
	}
	return nil
}

// expectedTokens is what the capacity model says a worker of spec holds on
// one GPU of the given node.
func expectedTokens(t *testing.T, spec *v1alpha1.MLAServiceSpec, node string) (int64, string) {
	t.Helper()
	var n corev1.Node
	if err := k8s.Get(context.Background(), client.ObjectKey{Name: node}, &n); err != nil {
		t.Fatalf("node %s: %v", node, err)
	}
	product, memMiB, err := clusterconfig.GPUOf(&n)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := capacity.FromSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Estimate(capacity.GPU{Product: product, MemoryBytes: memMiB * capacity.MiB}).Tokens, product
}

// checkCapacity checks every worker's reported and predicted capacity
// against the capacity model for the GPU it landed on, and the service's
// total.
func checkCapacity(t *testing.T, svc *v1alpha1.MLAService) {
	t.Helper()
	var total int64
	if len(svc.Status.Workers) == 0 {
		t.Fatalf("service %s lists no workers", svc.Name)
	}
	for _, w := range svc.Status.Workers {
		if !w.Ready {
			continue
		}
		want, product := expectedTokens(t, &svc.Spec, w.Node)
		if w.GPUProduct != product {
			t.Errorf("worker %s: GPU product %q, its node %s has %q", w.Pod, w.GPUProduct, w.Node, product)
		}
		if w.CapacityTokens != want {
			t.Errorf("worker %s on %s (%s): reported capacity %d tokens, capacity model says %d", w.Pod, w.Node, product, w.CapacityTokens, want)
		}
		if w.PredictedCapacityTokens != want {
			t.Errorf("worker %s on %s (%s): predicted capacity %d tokens, capacity model says %d", w.Pod, w.Node, product, w.PredictedCapacityTokens, want)
		}
		total += w.CapacityTokens
	}
	if svc.Status.KVCache.CapacityTokens != total {
		t.Errorf("service capacity %d tokens, ready workers report %d", svc.Status.KVCache.CapacityTokens, total)
	}
}

func clientInNamespace(ns string) client.ListOption { return client.InNamespace(ns) }

func mustJSON(t *testing.T, obj any) []byte {
	t.Helper()
	data, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// fastReportArgs makes workers report every 2 s instead of every 30 s, if
// the worker has a flag for it, so scale decisions and freshness show within
// a test's time.
var fastReportArgs []string

var heartbeatFlag = regexp.MustCompile(`(?m)^\s*--?([a-z0-9-]*heartbeat[a-z0-9-]*)\b`)

func detectWorkerFlags() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, filepath.Join(binDir, "worker"), "--help").CombinedOutput()
	if m := heartbeatFlag.FindSubmatch(out); m != nil {
		fastReportArgs = []string{"--" + string(m[1]) + "=2s"}
	}
}
