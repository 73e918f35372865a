package reportclock

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

var (
	t0  = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	svc = types.NamespacedName{Namespace: "ns", Name: "svc"}
)

func key(uid string) Key { return Key{Service: svc, Pod: types.UID(uid)} }

// step is the operator looking at a pod at t0+at (its own clock) and
// finding a report whose time is t0+reported (the worker's clock).
type step struct {
	at, reported time.Duration
	want         time.Duration
}

func TestAge(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"first sight trusts the worker: recent", []step{{0, -10 * s, 10 * s}}},
		{"first sight trusts the worker: long dead stays old", []step{{0, -5 * time.Minute, 5 * time.Minute}}},
		{"first sight of a future time is no younger than zero", []step{{0, 2 * time.Minute, 0}, {40 * s, 2 * time.Minute, 40 * s}}},
		{"an unchanged report ages with the operator's clock", []step{{0, -10 * s, 10 * s}, {20 * s, -10 * s, 30 * s}, {85 * s, -10 * s, 95 * s}}},
		{"a heartbeat restarts the age at zero", []step{{0, -10 * s, 10 * s}, {25 * s, 20 * s, 0}, {45 * s, 20 * s, 20 * s}, {55 * s, 50 * s, 0}}},
		{"looking twice at one instant answers the same", []step{{0, -10 * s, 10 * s}, {5 * s, 5 * s, 0}, {5 * s, 5 * s, 0}}},
		{"a time stepped back is a new report too", []step{{0, 0, 0}, {30 * s, 30 * s, 0}, {60 * s, -time.Hour, 0}, {70 * s, -time.Hour, 10 * s}}},
		// The node's clock runs 2 min behind the operator's: its first
		// report looks stale, every heartbeat after it is fresh.
		{"node 2 min behind", []step{
			{0, -2 * time.Minute, 2 * time.Minute},
			{30 * s, 30*s - 2*time.Minute, 0},
			{60 * s, 60*s - 2*time.Minute, 0},
			{100 * s, 60*s - 2*time.Minute, 40 * s},
		}},
		// The node's clock runs 2 min ahead and the worker dies after the
		// heartbeat at 30 s: the report is 90 s old 90 s later by the
		// operator's clock, not 2 min after that.
		{"node 2 min ahead, worker dies", []step{
			{0, 2 * time.Minute, 0},
			{30 * s, 30*s + 2*time.Minute, 0},
			{120 * s, 30*s + 2*time.Minute, 90 * s},
			{121 * s, 30*s + 2*time.Minute, 91 * s},
		}},
		// Minutes behind, heartbeating every 30 s: never older than the gap
		// between the operator's looks.
		{"node 10 min behind, heartbeating", []step{
			{0, -10 * time.Minute, 10 * time.Minute},
			{30 * s, 30*s - 10*time.Minute, 0},
			{50 * s, 30*s - 10*time.Minute, 20 * s},
			{60 * s, 60*s - 10*time.Minute, 0},
		}},
	} {
		var tr Tracker
		for i, st := range tc.steps {
			if got := tr.Age(key("a"), t0.Add(st.reported), t0.Add(st.at)); got != st.want {
				t.Errorf("%s: step %d (at %s, report %s): age %s, want %s", tc.name, i, st.at, st.reported, got, st.want)
			}
		}
	}
}

// A reconcile reads its clock, then lists pods from the cache; the watch may
// see a heartbeat in between and note it. The reconcile's older copy of the
// pod must not replace that sighting, or the new report would count from
// whenever a reconcile next looked.
func TestAnOlderCopyDoesNotReplaceANewerSighting(t *testing.T) {
	var tr Tracker
	tr.Age(key("a"), t0, t0)                                         // a reconcile saw the report made at t0
	tr.Age(key("a"), t0.Add(30*time.Second), t0.Add(31*time.Second)) // the watch saw a heartbeat at 31 s
	// A reconcile that read its clock at 30.5 s still lists the old copy.
	if got := tr.Age(key("a"), t0, t0.Add(30500*time.Millisecond)); got != 0 {
		t.Errorf("older copy: age %s, want 0", got)
	}
	if got := tr.Age(key("a"), t0.Add(30*time.Second), t0.Add(100*time.Second)); got != 69*time.Second {
		t.Errorf("heartbeat at 100 s: age %s, want 69s (counted from when the watch saw it)", got)
	}
}

func TestPodsAreIndependent(t *testing.T) {
	var tr Tracker
	tr.Age(key("a"), t0, t0)
	if got := tr.Age(key("b"), t0.Add(-time.Minute), t0.Add(10*time.Second)); got != 70*time.Second {
		t.Errorf("b at first sight: %s", got)
	}
	other := Key{Service: types.NamespacedName{Namespace: "ns", Name: "other"}, Pod: "a"}
	if got := tr.Age(other, t0.Add(-time.Minute), t0.Add(10*time.Second)); got != 70*time.Second {
		t.Errorf("same UID in another service shares a sighting: %s", got)
	}
	if got := tr.Age(key("a"), t0, t0.Add(10*time.Second)); got != 10*time.Second {
		t.Errorf("a: %s", got)
	}
}

func TestPodWithoutUIDIsNotRemembered(t *testing.T) {
	var tr Tracker
	if got := tr.Age(key(""), t0.Add(-time.Minute), t0); got != time.Minute {
		t.Errorf("age %s", got)
	}
	if got := tr.Age(key(""), t0.Add(time.Minute), t0); got != 0 {
		t.Errorf("future age %s", got)
	}
	if tr.Len() != 0 {
		t.Errorf("remembered %d", tr.Len())
	}
}

func TestLast(t *testing.T) {
	var tr Tracker
	if _, ok := tr.Last(key("a"), t0); ok {
		t.Fatal("a pod never seen has a last age")
	}
	tr.Age(key("a"), t0.Add(-5*time.Second), t0)
	if age, ok := tr.Last(key("a"), t0.Add(10*time.Second)); !ok || age != 15*time.Second {
		t.Errorf("last %s %v, want 15s", age, ok)
	}
	// Last records nothing: the sighting is unchanged.
	if got := tr.Age(key("a"), t0.Add(-5*time.Second), t0.Add(20*time.Second)); got != 25*time.Second {
		t.Errorf("age after Last %s", got)
	}
}

func TestForgetting(t *testing.T) {
	other := types.NamespacedName{Namespace: "ns", Name: "other"}
	for _, tc := range []struct {
		name   string
		forget func(*Tracker)
		// gone are the pods of svc forgotten; other's pod "z" must stay.
		gone, kept []string
	}{
		{"retain keeps the live pods", func(tr *Tracker) { tr.Retain(svc, []types.UID{"a", "c", "unknown"}) }, []string{"b"}, []string{"a", "c"}},
		{"retain nothing", func(tr *Tracker) { tr.Retain(svc, nil) }, []string{"a", "b", "c"}, nil},
		{"forget a pod", func(tr *Tracker) { tr.ForgetPod(key("b")) }, []string{"b"}, []string{"a", "c"}},
		{"forget an unknown pod", func(tr *Tracker) { tr.ForgetPod(key("x")) }, nil, []string{"a", "b", "c"}},
		{"forget the service", func(tr *Tracker) { tr.Forget(svc) }, []string{"a", "b", "c"}, nil},
	} {
		var tr Tracker
		for _, uid := range []string{"a", "b", "c"} {
			tr.Age(key(uid), t0.Add(-time.Hour), t0)     // first sight: an hour old
			tr.Age(key(uid), t0, t0.Add(10*time.Second)) // renewed: 0
		}
		tr.Age(Key{Service: other, Pod: "z"}, t0, t0)
		tc.forget(&tr)
		if n := tr.Len(); n != len(tc.kept)+1 {
			t.Errorf("%s: %d remembered, want %d", tc.name, n, len(tc.kept)+1)
		}
		if _, ok := tr.Last(Key{Service: other, Pod: "z"}, t0); !ok {
			t.Errorf("%s: another service's pod forgotten", tc.name)
		}
		for _, uid := range tc.kept {
			if age, ok := tr.Last(key(uid), t0.Add(20*time.Second)); !ok || age != 10*time.Second {
				t.Errorf("%s: %s kept as %s %v", tc.name, uid, age, ok)
			}
		}
		// A forgotten pod is seen for the first time again: the worker's
		// word counts, so an old report stays old.
		for _, uid := range tc.gone {
			if _, ok := tr.Last(key(uid), t0); ok {
				t.Errorf("%s: %s not forgotten", tc.name, uid)
			}
			if age := tr.Age(key(uid), t0, t0.Add(time.Hour)); age != time.Hour {
				t.Errorf("%s: %s after forgetting is %s old, want the worker's 1h", tc.name, uid, age)
			}
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	var tr Tracker
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				k := Key{Service: types.NamespacedName{Namespace: "ns", Name: fmt.Sprint(g % 2)}, Pod: types.UID(fmt.Sprint(i % 10))}
				tr.Age(k, t0.Add(time.Duration(i)*time.Second), t0.Add(time.Duration(i)*time.Second))
				tr.Last(k, t0)
				if i%50 == 0 {
					tr.Retain(k.Service, []types.UID{"1", "2"})
				}
			}
		}()
	}
	wg.Wait()
	if n := tr.Len(); n > 20 {
		t.Errorf("%d remembered of at most 20 pods", n)
	}
}

// A pod the operator saw before it reported (its own new workers): the
// first report counts from when it appears, whatever the node's clock says;
// an Unreported sighting changes nothing for a pod already seen, and Last
// knows no report for a pod seen only without one.
func TestUnreported(t *testing.T) {
	s := time.Second
	for _, tc := range []struct {
		name      string
		reported  time.Duration // the first report's time, by the node's clock
		wantFirst time.Duration
	}{
		{"node 2 min behind", -2 * time.Minute, 0},
		{"node in step", 10 * s, 0},
		{"node 2 min ahead", 2 * time.Minute, 0},
	} {
		var tr Tracker
		tr.Unreported(key("a"), t0)
		if _, ok := tr.Last(key("a"), t0.Add(5*s)); ok {
			t.Errorf("%s: Last knows a report before any", tc.name)
		}
		if got := tr.Age(key("a"), t0.Add(tc.reported), t0.Add(10*s)); got != tc.wantFirst {
			t.Errorf("%s: first report: age %s, want %s", tc.name, got, tc.wantFirst)
		}
		if got := tr.Age(key("a"), t0.Add(tc.reported), t0.Add(40*s)); got != 30*s {
			t.Errorf("%s: unchanged 30 s later: age %s, want 30s", tc.name, got)
		}
		tr.Unreported(key("a"), t0.Add(50*s)) // an older copy without the report
		if got, ok := tr.Last(key("a"), t0.Add(50*s)); !ok || got != 40*s {
			t.Errorf("%s: after a late Unreported: Last = %s, %v; want 40s, true", tc.name, got, ok)
		}
	}
	var tr Tracker
	tr.Unreported(Key{Service: svc}, t0) // no UID: not remembered
	if tr.Len() != 0 {
		t.Errorf("a pod without a UID was remembered")
	}
}
