package processruntime

import (
	"time"

	corev1 "k8s.io/api/core/v1"
)

// ShouldRestart applies the pod's restartPolicy to a container that exited
// with exitCode.
func ShouldRestart(policy corev1.RestartPolicy, exitCode int) bool {
	switch policy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return exitCode != 0
	default:
		return true
	}
}

// Backoff is the delay before restarting a crashed container: Initial,
// doubled per restart up to Max, and reset once a container ran for Reset,
// as the kubelet's CrashLoopBackOff does (10 s, 5 min, 10 min there; the
// local cluster defaults shorter so tests see restarts quickly).
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
	Reset   time.Duration
}

// DefaultBackoff is the local cluster's restart backoff.
var DefaultBackoff = Backoff{Initial: time.Second, Max: 30 * time.Second, Reset: 2 * time.Minute}

// Delay is the wait before restart number restarts+1, given that the last
// run lasted ran.
func (b Backoff) Delay(restarts int32, ran time.Duration) time.Duration {
	if ran >= b.Reset || restarts <= 0 {
		return b.Initial
	}
	d := b.Initial
	for range restarts {
		d *= 2
		if d >= b.Max {
			return b.Max
		}
	}
	return d
}
