package localcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/localcluster/clusterconfig"
	"github.com/mla-operator/mla-operator/internal/localcluster/processruntime"
	"github.com/mla-operator/mla-operator/test/builders"
)

// The harness's own test: one small cluster, a fake worker binary.
var cluster *Cluster

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	root, err := filepath.Abs("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "localcluster-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	fake := filepath.Join(tmp, "fakeworker")
	build := exec.Command("go", "build", "-o", fake, "./internal/localcluster/testdata/fakeworker")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the fake worker: %v\n%s", err, out)
		return 1
	}
	inv, err := clusterconfig.Parse([]byte(`pools:
- name: h100
  count: 2
  zone: zone-a
  gpu: {product: NVIDIA-H100-80GB-HBM3, memoryMiB: 81559, count: 8, computeCapability: "9.0"}
- name: l4
  count: 1
  gpu: {product: NVIDIA-L4, memoryMiB: 23034, count: 4, computeCapability: "8.9"}
`))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cluster, err = Start(ctx, Options{
		BinDir:       filepath.Join(root, "bin"),
		WorkDir:      filepath.Join(tmp, "cluster"),
		Inventory:    inv,
		WorkerBinary: fake,
		Backoff:      processruntime.Backoff{Initial: 200 * time.Millisecond, Max: time.Second, Reset: time.Minute},
		Logf:         func(f string, a ...any) { fmt.Fprintf(os.Stderr, "cluster: "+f+"\n", a...) },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the local cluster:", err)
		return 1
	}
	defer cluster.Stop()
	return m.Run()
}

func namespace(t *testing.T) string {
	t.Helper()
	name := strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	if len(name) > 50 {
		name = name[:50]
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: name + "-"}}
	ns, err := cluster.Client.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cluster.Client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

func eventually(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func getPod(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	p, err := cluster.Client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// workerPod is a worker pod as the operator makes one: downward-API env,
// the port, a /readyz probe.
func workerPod(ns, name string, env ...corev1.EnvVar) *corev1.Pod {
	p := builders.Pod(ns, name).WorkerOf("svc").GPURequest(1).Obj()
	c := &p.Spec.Containers[0]
	c.Name = "worker"
	c.Args = []string{"--port=$(MLA_PORT)", "--name=$(MLA_POD_NAME)"}
	c.Env = append([]corev1.EnvVar{
		{Name: v1alpha1.EnvPort, Value: "8080"},
		{Name: v1alpha1.EnvPodName, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: v1alpha1.EnvPodIP, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: v1alpha1.EnvNodeName, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
	}, env...)
	c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}}, PeriodSeconds: 1}
	p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](5)
	p.Status = corev1.PodStatus{}
	return p
}

func create(t *testing.T, p *corev1.Pod) {
	t.Helper()
	if _, err := cluster.Client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitReady waits up to 30 s for the pod to be Ready and returns it.
func waitReady(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	eventually(t, 30*time.Second, func() error {
		pod = getPod(t, ns, name)
		if !ready(pod) {
			return fmt.Errorf("not ready: phase %s, %+v", pod.Status.Phase, pod.Status.ContainerStatuses)
		}
		return nil
	})
	return pod
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func TestOrdinaryGPUPodRunsOnAKwokNode(t *testing.T) {
	ns := namespace(t)
	p := builders.Pod(ns, "plain").GPURequest(8).Obj()
	p.Status = corev1.PodStatus{}
	p.Spec.NodeSelector = map[string]string{v1alpha1.LabelGPUProduct: "NVIDIA-H100-80GB-HBM3"}
	create(t, p)
	eventually(t, 30*time.Second, func() error {
		p := getPod(t, ns, "plain")
		if p.Status.Phase != corev1.PodRunning || !ready(p) {
			return fmt.Errorf("phase %s ready %v on %q", p.Status.Phase, ready(p), p.Spec.NodeName)
		}
		if !strings.HasPrefix(p.Status.PodIP, "127.") {
			return fmt.Errorf("pod IP %q is not loopback", p.Status.PodIP)
		}
		return nil
	})
}

func TestWorkerPodRunsAsAProcess(t *testing.T) {
	ns := namespace(t)
	create(t, workerPod(ns, "w"))
	pod := waitReady(t, ns, "w")
	node, err := cluster.Client.CoreV1().Nodes().Get(context.Background(), pod.Spec.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pod.Status.PodIP, strings.TrimSuffix(node.Spec.PodCIDR, "0/24")) {
		t.Errorf("pod IP %s not in node %s's pod CIDR %s", pod.Status.PodIP, node.Name, node.Spec.PodCIDR)
	}
	// The process answers on the pod IP with what it was given.
	resp, err := http.Get("http://" + pod.Status.PodIP + ":8080/env")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Env  map[string]string
		Args []string
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	product, mem, _ := clusterconfig.GPUOf(node)
	want := map[string]string{
		v1alpha1.EnvPodName:      "w",
		v1alpha1.EnvPodIP:        pod.Status.PodIP,
		v1alpha1.EnvNodeName:     node.Name,
		v1alpha1.EnvDevice:       "cpu",
		v1alpha1.EnvSimulatedGPU: fmt.Sprintf("%s:%d", product, mem),
		"KUBECONFIG":             cluster.KubeconfigPath,
	}
	for k, v := range want {
		if got.Env[k] != v {
			t.Errorf("env %s = %q, want %q", k, got.Env[k], v)
		}
	}
	if strings.Join(got.Args, " ") != "--port=8080 --name=w" {
		t.Errorf("args = %q, want $(VAR)s expanded", got.Args)
	}

	// Deleting the pod stops the process and removes the pod.
	if err := cluster.Client.CoreV1().Pods(ns).Delete(context.Background(), "w", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		_, err := cluster.Client.CoreV1().Pods(ns).Get(context.Background(), "w", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("pod still there (%v)", err)
		}
		return nil
	})
	if _, err := http.Get("http://" + pod.Status.PodIP + ":8080/readyz"); err == nil {
		t.Error("worker still answers after its pod is gone")
	}
	if _, err := os.Stat(cluster.WorkerLogPath(ns, "w")); err != nil {
		t.Errorf("worker log: %v", err)
	}
}

// The node lifecycle controller sets Ready=False on every pod of a node
// whose lease heartbeats lag; the runtime, like a kubelet, sets a running,
// healthy worker's readiness back, and then stops writing.
func TestWorkerReadinessFlippedByOthersIsRestored(t *testing.T) {
	ns := namespace(t)
	create(t, workerPod(ns, "flip"))
	pod := waitReady(t, ns, "flip")
	containerID := pod.Status.ContainerStatuses[0].ContainerID
	for i, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady || c.Type == corev1.ContainersReady {
			pod.Status.Conditions[i].Status = corev1.ConditionFalse
			pod.Status.Conditions[i].LastTransitionTime = metav1.Now()
		}
	}
	if _, err := cluster.Client.CoreV1().Pods(ns).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		pod = getPod(t, ns, "flip")
		for _, c := range pod.Status.Conditions {
			if (c.Type == corev1.PodReady || c.Type == corev1.ContainersReady) && c.Status != corev1.ConditionTrue {
				return fmt.Errorf("%s is %s", c.Type, c.Status)
			}
		}
		return nil
	})
	if cs := pod.Status.ContainerStatuses[0]; cs.ContainerID != containerID || cs.RestartCount != 0 {
		t.Errorf("worker restarted: container %s (was %s), %d restarts", cs.ContainerID, containerID, cs.RestartCount)
	}
	// No write loop: the pod stays as it is (the fake worker writes no reports).
	rv := pod.ResourceVersion
	time.Sleep(3 * time.Second)
	if again := getPod(t, ns, "flip"); again.ResourceVersion != rv {
		t.Errorf("pod still being written after the restore: resourceVersion %s -> %s", rv, again.ResourceVersion)
	}
}

func TestCrashingWorkerBacksOffAndReportsItsStderr(t *testing.T) {
	ns := namespace(t)
	create(t, workerPod(ns, "crash",
		corev1.EnvVar{Name: "FAKE_EXIT_AFTER", Value: "100ms"},
		corev1.EnvVar{Name: "FAKE_EXIT_CODE", Value: "3"}))
	eventually(t, 30*time.Second, func() error {
		p := getPod(t, ns, "crash")
		if len(p.Status.ContainerStatuses) == 0 {
			return fmt.Errorf("no container status")
		}
		cs := p.Status.ContainerStatuses[0]
		if cs.RestartCount < 2 {
			return fmt.Errorf("restart count %d", cs.RestartCount)
		}
		last := cs.LastTerminationState.Terminated
		if last == nil || last.ExitCode != 3 || !strings.Contains(last.Message, "exiting with 3") {
			return fmt.Errorf("last termination %+v", last)
		}
		if ready(p) {
			return fmt.Errorf("a crash-looping pod is Ready")
		}
		return nil
	})
}

func TestNeverRestartedWorkerFails(t *testing.T) {
	ns := namespace(t)
	p := workerPod(ns, "once", corev1.EnvVar{Name: "FAKE_EXIT_AFTER", Value: "100ms"}, corev1.EnvVar{Name: "FAKE_EXIT_CODE", Value: "1"})
	p.Spec.RestartPolicy = corev1.RestartPolicyNever
	create(t, p)
	eventually(t, 30*time.Second, func() error {
		p := getPod(t, ns, "once")
		if p.Status.Phase != corev1.PodFailed {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		if t := p.Status.ContainerStatuses[0].State.Terminated; t == nil || t.ExitCode != 1 {
			return fmt.Errorf("state %+v", p.Status.ContainerStatuses[0].State)
		}
		return nil
	})
}

func TestStubbornWorkerIsKilledAfterTheGracePeriod(t *testing.T) {
	ns := namespace(t)
	p := workerPod(ns, "stubborn", corev1.EnvVar{Name: "FAKE_DRAIN", Value: "forever"})
	p.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1)
	create(t, p)
	var pid int
	eventually(t, 30*time.Second, func() error {
		p := getPod(t, ns, "stubborn")
		if !ready(p) {
			return fmt.Errorf("not ready")
		}
		_, err := fmt.Sscanf(p.Status.ContainerStatuses[0].ContainerID, "mla-local://%d", &pid)
		return err
	})
	start := time.Now()
	if err := cluster.Client.CoreV1().Pods(ns).Delete(context.Background(), "stubborn", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		if _, err := cluster.Client.CoreV1().Pods(ns).Get(context.Background(), "stubborn", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("pod still there")
		}
		return nil
	})
	if el := time.Since(start); el < time.Second {
		t.Errorf("pod removed after %s, before its 1 s grace period", el)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("worker process %d survived its pod", pid)
	}
}

func TestNodesCarryGPUFeatureDiscoveryLabels(t *testing.T) {
	n, err := cluster.Client.CoreV1().Nodes().Get(context.Background(), "l4-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n.Labels[v1alpha1.LabelGPUProduct] != "NVIDIA-L4" || n.Labels[v1alpha1.LabelGPUCount] != "4" {
		t.Errorf("labels %v", n.Labels)
	}
	gpus := n.Status.Allocatable[v1alpha1.DefaultGPUResource]
	if gpus.Value() != 4 {
		t.Errorf("allocatable GPUs %s, want 4", gpus.String())
	}
	if !Schedulable(n) {
		t.Errorf("node not schedulable: %+v %+v", n.Spec.Taints, n.Status.Conditions)
	}
}
