// Package autoscale computes how many workers an MLAService needs from the
// KV-cache utilization its workers report, the way the Horizontal Pod
// Autoscaler computes replicas from a metric: a ratio to the target, a
// tolerance band, and stabilization windows. It is pure: the caller passes
// the time and keeps one Stabilizer per service.
package autoscale

import (
	"math"
	"time"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// DefaultTolerance is the band around the target within which the replica
// count does not change (the HPA's default).
const DefaultTolerance = 0.1

// Defaults of the CRD, for objects built in code without them.
const (
	DefaultTarget         = 0.7
	DefaultUpWindow       = 30 * time.Second
	DefaultDownWindow     = 5 * time.Minute
	DefaultDrainGrace     = 5 * time.Minute
	maxRecommendationsAge = time.Hour
)

// Policy is a service's autoscaling settings.
type Policy struct {
	Min, Max int32
	// Target is the KV utilization aimed for, in (0, 1].
	Target float64
	// Tolerance is the relative band around Target, 0.1 = 10 %.
	Tolerance  float64
	UpWindow   time.Duration
	DownWindow time.Duration
}

// PolicyFromSpec reads spec.autoscaling, filling the CRD's defaults.
func PolicyFromSpec(a *v1alpha1.AutoscalingSpec) Policy {
	p := Policy{Min: a.MinReplicas, Max: a.MaxReplicas, Target: a.TargetKVUtilization, Tolerance: DefaultTolerance,
		UpWindow: DefaultUpWindow, DownWindow: DefaultDownWindow}
	if p.Target <= 0 {
		p.Target = DefaultTarget
	}
	if a.ScaleUpStabilization != nil {
		p.UpWindow = a.ScaleUpStabilization.Duration
	}
	if a.ScaleDownStabilization != nil {
		p.DownWindow = a.ScaleDownStabilization.Duration
	}
	p.Max = max(p.Max, p.Min)
	return p
}

// DrainGrace is how long a worker removed by scale-down may keep serving.
func DrainGrace(a *v1alpha1.AutoscalingSpec) time.Duration {
	if a == nil || a.DrainGracePeriod == nil {
		return DefaultDrainGrace
	}
	return a.DrainGracePeriod.Duration
}

// Load is what the counted workers (Ready, with a fresh report) hold.
type Load struct {
	// Workers is how many workers are counted.
	Workers         int32
	CapacityTokens  int64
	UsedTokens      int64
	ActiveSequences int32
	// WaitingRequests were turned away for lack of room: demand beyond the
	// used tokens.
	WaitingRequests int32
	// ContextLength sizes a waiting request when no sequence is active to
	// take the average from.
	ContextLength int64
}

// Demand is the tokens the service is asked to hold: those in use plus,
// for each waiting request, the average reservation of an active sequence.
func (l Load) Demand() float64 {
	perRequest := float64(l.ContextLength)
	if l.ActiveSequences > 0 {
		perRequest = float64(l.UsedTokens) / float64(l.ActiveSequences)
	}
	return float64(l.UsedTokens) + float64(l.WaitingRequests)*perRequest
}

// Recommend is the replica count that brings utilization to the target,
// before stabilization. current is the replicas asked for now; workers
// that exist but are not counted yet are assumed empty when scaling up and
// full when scaling down, so starting workers neither trigger nor hide a
// change (the HPA's rule for missing metrics).
func Recommend(current int32, load Load, p Policy) int32 {
	if load.Workers <= 0 || load.CapacityTokens <= 0 {
		return clamp(current, p) // nothing measured: no reason to move
	}
	perWorker := float64(load.CapacityTokens) / float64(load.Workers)
	n := max(current, load.Workers)
	missing := float64(n-load.Workers) * perWorker
	demand := load.Demand()
	ratio := demand / float64(load.CapacityTokens) / p.Target
	if math.Abs(ratio-1) <= p.Tolerance {
		return clamp(current, p)
	}
	if ratio > 1 {
		ratio = demand / (float64(load.CapacityTokens) + missing) / p.Target
		if ratio <= 1+p.Tolerance {
			return clamp(current, p)
		}
	} else {
		ratio = (demand + missing) / (float64(load.CapacityTokens) + missing) / p.Target
		if ratio >= 1-p.Tolerance {
			return clamp(current, p)
		}
	}
	desired := int32(math.Ceil(ratio * float64(n)))
	if ratio > 1 {
		desired = max(desired, current)
	} else {
		desired = min(desired, current)
	}
	return clamp(desired, p)
}

func clamp(n int32, p Policy) int32 { return min(max(n, p.Min), p.Max) }

type recommendation struct {
	at       time.Time
	replicas int32
}

// Stabilizer keeps a service's recent recommendations. Scaling up takes the
// lowest recommendation of the up window, scaling down the highest of the
// down window: a change happens only once it has been called for over the
// whole window.
type Stabilizer struct {
	recs []recommendation
}

// Next records recommended at now and returns the replicas to run.
func (s *Stabilizer) Next(now time.Time, current, recommended int32, p Policy) int32 {
	keep := max(p.UpWindow, p.DownWindow, time.Second)
	recs := s.recs[:0]
	for _, r := range s.recs {
		if now.Sub(r.at) <= min(keep, maxRecommendationsAge) {
			recs = append(recs, r)
		}
	}
	if len(s.recs) == 0 {
		// A fresh stabilizer (a new service, or the operator restarted)
		// starts as if the current count had been recommended all along,
		// so a restart never skips a window.
		recs = append(recs, recommendation{now, current})
	}
	s.recs = append(recs, recommendation{now, recommended})

	up, down := recommended, recommended
	for _, r := range s.recs {
		age := now.Sub(r.at)
		if age <= p.UpWindow {
			up = min(up, r.replicas)
		}
		if age <= p.DownWindow {
			down = max(down, r.replicas)
		}
	}
	out := current
	if out < up {
		out = up
	}
	if out > down {
		out = down
	}
	return clamp(out, p)
}
