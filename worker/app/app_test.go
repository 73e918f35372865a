package app

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/capacity"
	workerclient "github.com/mla-operator/mla-operator/worker/client"
	"github.com/mla-operator/mla-operator/worker/report"
	"github.com/mla-operator/mla-operator/worker/settings"
)

var pod = types.NamespacedName{Namespace: "default", Name: "worker-0"}

// testSettings is a two-layer model on a simulated 64 MiB GPU, with no
// weights or reserve: 0.9 x 64 MiB / (2 layers x 64 x 1,152 B) = 409 pages.
func testSettings(t testing.TB, env map[string]string, args ...string) *settings.Settings {
	t.Helper()
	base := map[string]string{
		v1alpha1.EnvLayers: "2", v1alpha1.EnvAttentionHeads: "16", v1alpha1.EnvReserveBytes: "0",
		v1alpha1.EnvSimulatedGPU: "Test-GPU:64", v1alpha1.EnvPodName: pod.Name, v1alpha1.EnvPodNamespace: pod.Namespace,
		v1alpha1.EnvModelName: "tiny",
	}
	for k, v := range env {
		base[k] = v
	}
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	s, envErr := settings.Register(fs, func(k string) string { return base[k] })
	if err := fs.Parse(append([]string{"--report-min-interval=10ms", "--drain-timeout=10s"}, args...)); err != nil {
		t.Fatal(err)
	}
	if err := envErr(); err != nil {
		t.Fatal(err)
	}
	return s
}

// noNVML fails Init as a machine without the driver does.
func noNVML() nvml.Interface {
	return &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}
}

func fakePod() client.Client {
	return fake.NewClientBuilder().WithObjects(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name}}).Build()
}

func podReport(t *testing.T, c client.Client) (v1alpha1.Report, bool) {
	t.Helper()
	var p corev1.Pod
	if err := c.Get(context.Background(), pod, &p); err != nil {
		t.Fatal(err)
	}
	rep, ok, err := report.Parse(p.Annotations)
	if err != nil {
		t.Fatal(err)
	}
	return rep, ok
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWorkerServesReportsAndDrains(t *testing.T) {
	s := testSettings(t, nil)
	kube := fakePod()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, terminate := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, s, Deps{NVML: noNVML(), Listener: ln, Patcher: kube,
			Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	}()
	c := workerclient.New("http://"+ln.Addr().String(), nil)
	eventually(t, "readiness", func() bool { return c.Ready(context.Background()) == nil })

	// The pool matches the capacity model for the simulated GPU.
	cfg, err := s.Capacity()
	if err != nil {
		t.Fatal(err)
	}
	want := cfg.Estimate(capacity.GPU{Product: "Test-GPU", MemoryBytes: 64 << 20})
	capy, err := c.Capacity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if capy.CapacityTokens != want.Tokens || capy.Device != "cpu" || capy.GPUProduct != "Test-GPU" || capy.MaxContextLength != want.Tokens {
		t.Fatalf("capacity %+v, want %d tokens on the simulated GPU", capy, want.Tokens)
	}
	eventually(t, "the first report", func() bool {
		r, ok := podReport(t, kube)
		return ok && r.Ready && r.CapacityTokens == want.Tokens
	})

	seq, err := c.CreateSequence(context.Background(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a report of the new sequence", func() bool {
		r, _ := podReport(t, kube)
		return r.ActiveSequences == 1 && r.UsedTokens == 1024
	})

	terminate() // SIGTERM
	eventually(t, "a draining report", func() bool {
		r, _ := podReport(t, kube)
		return r.Draining && !r.Ready
	})
	if err := c.Ready(context.Background()); !workerclient.IsDraining(err) {
		t.Errorf("readyz while draining = %v, want 503", err)
	}
	if _, err := c.CreateSequence(context.Background(), 10); !workerclient.IsDraining(err) {
		t.Errorf("create while draining = %v, want 503", err)
	}
	if _, err := c.AppendKV(context.Background(), seq.ID, 0, make([]uint16, 576)); err != nil {
		t.Errorf("existing sequence not served while draining: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("worker exited with a sequence still active: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := c.FreeSequence(context.Background(), seq.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("drained worker returned %v, want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("worker did not exit once its last sequence was freed")
	}
	if r, _ := podReport(t, kube); !r.Draining || r.Ready || r.ActiveSequences != 0 {
		t.Errorf("final report = %+v", r)
	}
}

func TestWorkerReportsContextThatDoesNotFit(t *testing.T) {
	s := testSettings(t, map[string]string{v1alpha1.EnvContextLength: "1000000"})
	kube := fakePod()
	err := Run(context.Background(), s, Deps{NVML: noNVML(), Patcher: kube, Logger: slog.New(slog.DiscardHandler)})
	var ce *capacity.ContextError
	if !errors.As(err, &ce) {
		t.Fatalf("Run = %v, want a ContextError", err)
	}
	if !strings.Contains(err.Error(), "the longest context that fits is 26176 tokens") {
		t.Errorf("message %q does not name the longest context that fits", err)
	}
	r, ok := podReport(t, kube)
	if !ok || r.Error != err.Error() || r.Ready || r.MaxContextLength != 26176 {
		t.Fatalf("failure report = %+v", r)
	}
}

func TestWorkerRefusesFP8AndMissingCUDA(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"fp8", map[string]string{v1alpha1.EnvKVDType: "fp8"}, "fp8 is not supported"},
		{"cuda without a GPU", map[string]string{v1alpha1.EnvDevice: "cuda"}, "--device cuda"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kube := fakePod()
			err := Run(context.Background(), testSettings(t, tc.env), Deps{NVML: noNVML(), Patcher: kube, Logger: slog.New(slog.DiscardHandler)})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run = %v, want an error containing %q", err, tc.want)
			}
			if r, ok := podReport(t, kube); !ok || !strings.Contains(r.Error, tc.want) {
				t.Fatalf("report = %+v, want the error", r)
			}
		})
	}
}

func TestWorkerRunsStandaloneWithoutReporting(t *testing.T) {
	s := testSettings(t, map[string]string{v1alpha1.EnvPodName: "", v1alpha1.EnvSimulatedGPU: ""})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, terminate := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, s, Deps{NVML: noNVML(), Listener: ln, Logger: slog.New(slog.DiscardHandler),
			HostMemoryBytes: func() (int64, error) { return 32 << 20, nil }})
	}()
	c := workerclient.New("http://"+ln.Addr().String(), nil)
	eventually(t, "readiness", func() bool { return c.Ready(context.Background()) == nil })
	capy, err := c.Capacity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if capy.GPUProduct != "cpu" || capy.CapacityTokens != 204*64 {
		t.Errorf("host-sized capacity = %+v, want 204 pages", capy)
	}
	terminate()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
