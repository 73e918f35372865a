package report

import (
	"context"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// countingPatcher counts patches and can fail them.
type countingPatcher struct {
	client.Client
	patches int
	fail    error
}

func (p *countingPatcher) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	if p.fail != nil {
		return p.fail
	}
	p.patches++
	return p.Client.Patch(ctx, obj, patch, opts...)
}

// state is a Source whose report the test changes.
type state struct {
	rep       v1alpha1.Report
	committed []v1alpha1.Report
}

func (s *state) Report() v1alpha1.Report     { return s.rep }
func (s *state) Committed(r v1alpha1.Report) { s.committed = append(s.committed, r) }

var podKey = types.NamespacedName{Namespace: "ns", Name: "worker-0"}

func setup(t *testing.T) (*Reporter, *countingPatcher, *state, *clocktesting.FakeClock) {
	t.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: podKey.Namespace, Name: podKey.Name,
		Annotations: map[string]string{"other": "kept"}}}
	p := &countingPatcher{Client: fake.NewClientBuilder().WithObjects(pod).Build()}
	s := &state{rep: v1alpha1.Report{CapacityTokens: 100_000, MaxContextLength: 100_000, Ready: true, Device: "cpu"}}
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 27, 18, 0, 0, 0, time.UTC))
	r := New(p, podKey, s, Options{Clock: clk})
	return r, p, s, clk
}

func readReport(t *testing.T, c client.Client) v1alpha1.Report {
	t.Helper()
	var pod corev1.Pod
	if err := c.Get(context.Background(), podKey, &pod); err != nil {
		t.Fatal(err)
	}
	if pod.Annotations["other"] != "kept" {
		t.Fatal("the patch removed another annotation")
	}
	rep, ok, err := Parse(pod.Annotations)
	if !ok || err != nil {
		t.Fatalf("no readable report on the pod (%v)", err)
	}
	return rep
}

func mustSync(t *testing.T, r *Reporter, want bool) {
	t.Helper()
	wrote, err := r.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if wrote != want {
		t.Fatalf("Sync wrote = %v, want %v", wrote, want)
	}
}

func TestWritesOnMaterialChangeRateLimitedAndHeartbeats(t *testing.T) {
	r, p, s, clk := setup(t)
	mustSync(t, r, true) // the first report goes out at once
	got := readReport(t, p.Client)
	if got.CapacityTokens != 100_000 || !got.Ready || !got.Time.Time.Equal(clk.Now()) {
		t.Fatalf("first report = %+v", got)
	}

	clk.Step(5 * time.Second)
	mustSync(t, r, false) // nothing changed

	s.rep.UsedTokens = 900 // under 1% of capacity
	clk.Step(5 * time.Second)
	mustSync(t, r, false)

	s.rep.UsedTokens = 1_100 // over 1%
	mustSync(t, r, true)
	if got := readReport(t, p.Client); got.UsedTokens != 1_100 {
		t.Fatalf("used tokens in report = %d", got.UsedTokens)
	}

	s.rep.ActiveSequences = 3 // material, but within MinInterval of the last write
	clk.Step(500 * time.Millisecond)
	mustSync(t, r, false)
	clk.Step(500 * time.Millisecond)
	mustSync(t, r, true)

	clk.Step(29 * time.Second)
	mustSync(t, r, false)
	clk.Step(time.Second) // heartbeat
	mustSync(t, r, true)
	if got := readReport(t, p.Client); !got.Time.Time.Equal(clk.Now()) {
		t.Fatalf("heartbeat report time = %v, want %v", got.Time, clk.Now())
	}
	if p.patches != 4 || len(s.committed) != 4 {
		t.Fatalf("%d patches, %d commits; want 4", p.patches, len(s.committed))
	}
}

func TestFailedWritesRetryNoFasterThanMinInterval(t *testing.T) {
	r, p, s, clk := setup(t)
	p.fail = errors.New("apiserver unavailable")
	if _, err := r.Sync(context.Background()); err == nil {
		t.Fatal("Sync with a failing apiserver returned no error")
	}
	clk.Step(100 * time.Millisecond)
	mustSync(t, r, false) // too soon to retry
	p.fail = nil
	clk.Step(time.Second)
	mustSync(t, r, true)
	if len(s.committed) != 1 {
		t.Fatalf("%d commits, want 1 (failed writes are not committed)", len(s.committed))
	}
}

func TestWriteIsUnconditional(t *testing.T) {
	r, p, s, _ := setup(t)
	mustSync(t, r, true)
	s.rep.Ready, s.rep.Draining = false, true
	if err := r.Write(context.Background(), s.rep); err != nil {
		t.Fatal(err)
	}
	if got := readReport(t, p.Client); got.Ready || !got.Draining {
		t.Fatalf("report after Write = %+v", got)
	}
	if last, ok := r.Last(); !ok || !last.Draining {
		t.Fatalf("Last = %+v, %v", last, ok)
	}
}

func TestMaterial(t *testing.T) {
	base := v1alpha1.Report{CapacityTokens: 10_000, UsedTokens: 5_000, ActiveSequences: 4, Ready: true}
	for _, tc := range []struct {
		name   string
		change func(*v1alpha1.Report)
		want   bool
	}{
		{"same", func(*v1alpha1.Report) {}, false},
		{"used within 1%", func(r *v1alpha1.Report) { r.UsedTokens += 100 }, false},
		{"used down beyond 1%", func(r *v1alpha1.Report) { r.UsedTokens -= 101 }, true},
		{"capacity", func(r *v1alpha1.Report) { r.CapacityTokens++ }, true},
		{"ready", func(r *v1alpha1.Report) { r.Ready = false }, true},
		{"draining", func(r *v1alpha1.Report) { r.Draining = true }, true},
		{"error", func(r *v1alpha1.Report) { r.Error = "boom" }, true},
		{"active sequences", func(r *v1alpha1.Report) { r.ActiveSequences++ }, true},
		{"requests start waiting", func(r *v1alpha1.Report) { r.WaitingRequests = 2 }, true},
		{"time only", func(r *v1alpha1.Report) { r.Time = metav1.Now() }, false},
	} {
		next := base
		tc.change(&next)
		if got := Material(base, next, 0.01); got != tc.want {
			t.Errorf("%s: Material = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRunWritesUntilCancelled(t *testing.T) {
	r, _, _, _ := setup(t)
	r.opts.Clock = clock.RealClock{}
	r.opts.Poll = 5 * time.Millisecond
	r.opts.MinInterval = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if last, ok := r.Last(); ok && last.ActiveSequences == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run never wrote the first report")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func FuzzParse(f *testing.F) {
	good, _ := Patch(v1alpha1.Report{CapacityTokens: 1, Ready: true})
	f.Add(string(good))
	f.Add(`{"capacityTokens": 5, "time": "2026-11-27T18:00:00Z"}`)
	f.Add(`{"capacityTokens": "x"}`)
	f.Fuzz(func(t *testing.T, raw string) {
		rep, ok, err := Parse(map[string]string{v1alpha1.AnnotationReport: raw})
		if !ok {
			t.Fatal("annotation present but Parse says none")
		}
		if err != nil {
			return
		}
		// What parses re-encodes into a patch that parses the same.
		patch, err := Patch(rep)
		if err != nil {
			t.Fatal(err)
		}
		if len(patch) == 0 {
			t.Fatal("empty patch")
		}
	})
}
