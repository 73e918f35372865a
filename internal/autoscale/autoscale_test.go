package autoscale

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

var policy = Policy{Min: 1, Max: 10, Target: 0.5, Tolerance: DefaultTolerance, UpWindow: 30 * time.Second, DownWindow: 5 * time.Minute}

// load is n counted workers of 1,000 tokens each with used tokens in use.
func load(n int32, used int64) Load {
	return Load{Workers: n, CapacityTokens: int64(n) * 1000, UsedTokens: used, ActiveSequences: int32(used / 100), ContextLength: 4096}
}

func TestRecommend(t *testing.T) {
	for _, tc := range []struct {
		name    string
		current int32
		load    Load
		policy  Policy
		want    int32
	}{
		{"at target", 2, load(2, 1000), policy, 2},
		{"inside the band above", 2, load(2, 1090), policy, 2},
		{"inside the band below", 2, load(2, 910), policy, 2},
		{"above the band", 2, load(2, 1200), policy, 3},
		{"full: twice the target", 2, load(2, 2000), policy, 4},
		{"below the band", 4, load(4, 1000), policy, 2},
		{"idle goes to the minimum", 4, load(4, 0), policy, 1},
		{"bounded by max", 2, load(2, 2000), Policy{Min: 1, Max: 3, Target: 0.5, Tolerance: 0.1}, 3},
		{"bounded by min", 3, load(3, 0), Policy{Min: 2, Max: 3, Target: 0.5, Tolerance: 0.1}, 2},
		{"nothing reported keeps the count", 3, Load{}, policy, 3},
		{"nothing reported still honours min", 0, Load{}, policy, 1},
		{"waiting requests are demand at the average reservation", 1,
			Load{Workers: 1, CapacityTokens: 1000, UsedTokens: 400, ActiveSequences: 4, WaitingRequests: 6}, policy, 2},
		{"waiting requests without active sequences count a full context", 1,
			Load{Workers: 1, CapacityTokens: 8192, WaitingRequests: 2, ContextLength: 4096}, policy, 2},
		{"starting workers count as empty when scaling up", 3, load(1, 900), policy, 3},
		{"starting workers count as full when scaling down", 3, load(1, 0), policy, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Recommend(tc.current, tc.load, tc.policy); got != tc.want {
				t.Fatalf("Recommend(%d, %+v) = %d, want %d", tc.current, tc.load, got, tc.want)
			}
		})
	}
}

// clock is a fake clock the tests advance by hand.
type clock struct{ now time.Time }

func (c *clock) step(d time.Duration) time.Time { c.now = c.now.Add(d); return c.now }

func TestStabilizerScalesUpOnlyAfterTheUpWindow(t *testing.T) {
	c := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var s Stabilizer
	current := int32(2)
	if got := s.Next(c.now, current, 4, policy); got != 2 {
		t.Fatalf("first call scaled to %d; a fresh stabilizer must wait the window", got)
	}
	for range 5 { // 25 s of calls for 4: still inside the 30 s window
		if got := s.Next(c.step(5*time.Second), current, 4, policy); got != 2 {
			t.Fatalf("at %s scaled to %d inside the up window", c.now, got)
		}
	}
	if got := s.Next(c.step(6*time.Second), current, 4, policy); got != 4 {
		t.Fatalf("after the up window: %d, want 4", got)
	}
}

func TestStabilizerTakesTheLowestUpRecommendation(t *testing.T) {
	c := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var s Stabilizer
	s.Next(c.now, 2, 2, policy)
	s.Next(c.step(time.Second), 2, 5, policy)
	s.Next(c.step(20*time.Second), 2, 3, policy)
	// 31 s after the start, the 5 and the 3 are in the window: the lowest, 3.
	if got := s.Next(c.step(10*time.Second), 2, 6, policy); got != 3 {
		t.Fatalf("got %d, want 3 (the lowest of the up window)", got)
	}
}

func TestStabilizerScalesDownOnlyAfterTheDownWindow(t *testing.T) {
	c := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var s Stabilizer
	current := int32(4)
	for i := range 10 { // 4m30s of calls for 1
		if got := s.Next(c.now, current, 1, policy); got != current {
			t.Fatalf("call %d at %s scaled to %d inside the down window", i, c.now, got)
		}
		c.step(30 * time.Second)
	}
	// A brief spike inside the window holds the count up for a whole window.
	if got := s.Next(c.now, current, 3, policy); got != current {
		t.Fatalf("got %d during the spike", got)
	}
	c.step(4*time.Minute + 59*time.Second)
	if got := s.Next(c.now, current, 1, policy); got != 3 {
		t.Fatalf("spike still in the window: got %d, want 3", got)
	}
	if got := s.Next(c.step(2*time.Second), current, 1, policy); got != 1 {
		t.Fatalf("after the window: got %d, want 1", got)
	}
}

func TestStabilizerAppliesBoundsAtOnce(t *testing.T) {
	var s Stabilizer
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := s.Next(now, 12, 12, policy); got != policy.Max {
		t.Fatalf("above max: %d, want %d", got, policy.Max)
	}
	var s2 Stabilizer
	if got := s2.Next(now, 0, 0, policy); got != policy.Min {
		t.Fatalf("below min: %d, want %d", got, policy.Min)
	}
}

func TestPolicyFromSpec(t *testing.T) {
	p := PolicyFromSpec(&v1alpha1.AutoscalingSpec{MinReplicas: 2, MaxReplicas: 5,
		ScaleUpStabilization: &metav1.Duration{Duration: time.Second}})
	want := Policy{Min: 2, Max: 5, Target: DefaultTarget, Tolerance: DefaultTolerance, UpWindow: time.Second, DownWindow: DefaultDownWindow}
	if p != want {
		t.Fatalf("PolicyFromSpec = %+v, want %+v", p, want)
	}
	if DrainGrace(nil) != DefaultDrainGrace {
		t.Fatal("DrainGrace(nil) is not the default")
	}
	if d := DrainGrace(&v1alpha1.AutoscalingSpec{DrainGracePeriod: &metav1.Duration{Duration: 7 * time.Second}}); d != 7*time.Second {
		t.Fatalf("DrainGrace = %s", d)
	}
}
