// Package reportclock measures how old a worker's report is by the
// operator's clock alone, the way the Kubernetes node lifecycle controller
// judges node leases: it notes when it saw a report's time change and counts
// from there, instead of trusting the clock of the node that wrote it. A
// worker on a node whose clock runs minutes behind is then still counted,
// and one whose clock runs ahead does not keep a dead worker counted longer.
//
// Only a report the operator sees on a pod it has not seen before (after
// the operator starts, its informer lists pods that reported long ago)
// takes the worker's word for the report's age (never below zero):
// otherwise an operator restart would make every long-dead worker fresh
// again. A pod first seen without a report (Unreported), as the operator's
// own new workers are, has its first report aged from when it appears.
package reportclock

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Key names a worker pod: the service it belongs to (so a service's
// sightings can be dropped with it) and the pod's UID (so a pod recreated
// under the same name starts afresh).
type Key struct {
	Service types.NamespacedName
	Pod     types.UID
}

// Tracker remembers, per worker pod, the last report time seen and when
// the operator saw it. The zero value is ready; it is safe for concurrent
// use (reconciles in parallel, and the watch's event handlers).
type Tracker struct {
	mu       sync.Mutex
	services map[types.NamespacedName]map[types.UID]sighting
}

// sighting is a report time value and the operator's view of its age; a
// zero reportTime is a pod seen without a report.
type sighting struct {
	reportTime time.Time
	// seenAt is the operator's clock when it first saw reportTime.
	seenAt time.Time
	// ageAtSight is the report's age at seenAt: zero for a renewed
	// report, the worker's own claim at the first sight of a pod.
	ageAtSight time.Duration
}

func (s sighting) age(now time.Time) time.Duration {
	return s.ageAtSight + max(now.Sub(s.seenAt), 0)
}

// Age records that the pod's report carries reportTime, as seen at now by
// the operator's clock, and returns how old the report is: the worker's
// claim now - reportTime (at least zero) the first time the pod is seen,
// zero whenever the time differs from the one seen last, and otherwise the
// age it had then plus the time the operator's clock moved on since. A pod
// without a UID (never created) is not remembered. Callers read now before
// they read the pod, so that a sighting made after now is known to be of a
// newer copy and is kept.
func (t *Tracker) Age(key Key, reportTime, now time.Time) time.Duration {
	if key.Pod == "" {
		return max(now.Sub(reportTime), 0)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	pods := t.podsOf(key.Service)
	s, seen := pods[key.Pod]
	switch {
	case seen && s.reportTime.IsZero():
		// The pod had no report when the operator saw it: this one was
		// written since, whatever the worker's clock says.
		s = sighting{reportTime: reportTime, seenAt: now}
	case seen && s.seenAt.After(now):
		// Seen after the caller read its clock: the caller holds an
		// older copy of the pod than the one that made the sighting
		// (the reconciler reads its clock before listing pods from the
		// cache, and the watch sees a new report only once the cache
		// holds it), so its time is no news.
		return s.age(now)
	case !seen:
		s = sighting{reportTime: reportTime, seenAt: now, ageAtSight: max(now.Sub(reportTime), 0)}
	case !s.reportTime.Equal(reportTime):
		// Any other value is a new write, even an earlier one (the
		// worker's clock stepped back): the worker was alive to make it.
		s = sighting{reportTime: reportTime, seenAt: now}
	default:
		return s.age(now)
	}
	pods[key.Pod] = s
	return s.age(now)
}

// Unreported records that the pod was seen, at now, without a report, so
// that its first report counts from when the operator sees it rather than
// from the worker's timestamp. It changes nothing for a pod already seen.
func (t *Tracker) Unreported(key Key, now time.Time) {
	if key.Pod == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	pods := t.podsOf(key.Service)
	if _, seen := pods[key.Pod]; !seen {
		pods[key.Pod] = sighting{seenAt: now}
	}
}

// podsOf returns the service's sightings, making room for them on first
// use. The caller holds t.mu.
func (t *Tracker) podsOf(service types.NamespacedName) map[types.UID]sighting {
	pods := t.services[service]
	if pods == nil {
		if t.services == nil {
			t.services = map[types.NamespacedName]map[types.UID]sighting{}
		}
		pods = map[types.UID]sighting{}
		t.services[service] = pods
	}
	return pods
}

// Last returns the age of the report last seen for the pod, as of now,
// without recording anything; false when none was seen.
func (t *Tracker) Last(key Key, now time.Time) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.services[key.Service][key.Pod]
	if !ok || s.reportTime.IsZero() {
		return 0, false
	}
	return s.age(now), true
}

// Retain forgets the service's pods other than live (pods deleted, or no
// longer the service's), so memory follows the pods that exist.
func (t *Tracker) Retain(service types.NamespacedName, live []types.UID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	pods := t.services[service]
	if len(pods) == 0 {
		return
	}
	keep := make(map[types.UID]bool, len(live))
	for _, uid := range live {
		keep[uid] = true
	}
	for uid := range pods {
		if !keep[uid] {
			delete(pods, uid)
		}
	}
	if len(pods) == 0 {
		delete(t.services, service)
	}
}

// ForgetPod forgets one pod (it was deleted).
func (t *Tracker) ForgetPod(key Key) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if pods := t.services[key.Service]; pods != nil {
		delete(pods, key.Pod)
		if len(pods) == 0 {
			delete(t.services, key.Service)
		}
	}
}

// Forget forgets every pod of a service (it was deleted).
func (t *Tracker) Forget(service types.NamespacedName) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.services, service)
}

// Len is the number of pods remembered.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, pods := range t.services {
		n += len(pods)
	}
	return n
}
