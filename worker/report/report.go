// Package report writes a worker's v1alpha1.Report into the
// inference.mla.dev/report annotation of the worker's own pod, where the
// operator aggregates it into the MLAService status.
//
// Each worker writes only its own pod, with a JSON merge patch of that one
// annotation: no two writers share an object, so reports of many workers
// never conflict or overwrite each other, and a report disappears with its
// pod. Writes are bounded: at once on a material change (but at most one
// per MinInterval), otherwise a heartbeat every Heartbeat so that the
// operator can tell a live worker from a stale report.
package report

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// Source is the worker's state. Report is called often (every Poll) and
// must be cheap; the reporter sets Time.
type Source interface {
	Report() v1alpha1.Report
}

// SourceFunc adapts a function to Source.
type SourceFunc func() v1alpha1.Report

// Report calls f.
func (f SourceFunc) Report() v1alpha1.Report { return f() }

// Committer is an optional Source method, called after each successful
// write with the report written (for counters "since the previous report").
type Committer interface {
	Committed(v1alpha1.Report)
}

// Patcher is the one client call the reporter makes; a controller-runtime
// client.Client is one.
type Patcher interface {
	Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error
}

// Options tune the reporter; zero values take the defaults.
type Options struct {
	// Heartbeat is the longest time between writes (30 s). The operator
	// treats reports older than about three heartbeats as stale.
	Heartbeat time.Duration
	// MinInterval is the shortest time between writes (1 s).
	MinInterval time.Duration
	// Poll is how often Run reads the source for changes (250 ms).
	Poll time.Duration
	// UsedFraction is how far used tokens must move, as a fraction of
	// capacity, to be a material change (0.01).
	UsedFraction float64
	// Timeout bounds one write (10 s).
	Timeout time.Duration
	Logger  *slog.Logger
	Clock   clock.WithTicker
}

func (o *Options) defaults() {
	if o.Heartbeat <= 0 {
		o.Heartbeat = 30 * time.Second
	}
	if o.MinInterval <= 0 {
		o.MinInterval = time.Second
	}
	if o.Poll <= 0 {
		o.Poll = 250 * time.Millisecond
	}
	if o.UsedFraction <= 0 {
		o.UsedFraction = 0.01
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
}

// Reporter writes one pod's reports.
type Reporter struct {
	patcher Patcher
	pod     types.NamespacedName
	source  Source
	opts    Options
	kick    chan struct{}

	mu          sync.Mutex
	last        *v1alpha1.Report // last written
	lastWrite   time.Time
	lastAttempt time.Time
	failing     bool
}

// New makes a reporter for pod.
func New(p Patcher, pod types.NamespacedName, src Source, opts Options) *Reporter {
	opts.defaults()
	return &Reporter{patcher: p, pod: pod, source: src, opts: opts, kick: make(chan struct{}, 1)}
}

// Material says whether next differs from prev enough to write at once:
// anything the operator decides with, or used tokens moving by more than
// usedFraction of capacity.
func Material(prev, next v1alpha1.Report, usedFraction float64) bool {
	switch {
	case prev.CapacityTokens != next.CapacityTokens, prev.MaxContextLength != next.MaxContextLength,
		prev.Ready != next.Ready, prev.Draining != next.Draining, prev.Error != next.Error,
		prev.ActiveSequences != next.ActiveSequences, prev.GPUProduct != next.GPUProduct,
		prev.Device != next.Device, (prev.WaitingRequests == 0) != (next.WaitingRequests == 0):
		return true
	}
	moved := next.UsedTokens - prev.UsedTokens
	if moved < 0 {
		moved = -moved
	}
	return float64(moved) > usedFraction*float64(next.CapacityTokens)
}

// Notify asks Run to look at the source now rather than at its next poll.
func (r *Reporter) Notify() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run writes reports until ctx ends. The first report goes out at once.
func (r *Reporter) Run(ctx context.Context) {
	ticker := r.opts.Clock.NewTicker(r.opts.Poll)
	defer ticker.Stop()
	for {
		r.Sync(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		case <-r.kick:
		}
	}
}

// Sync reads the source once and writes if the report changed materially
// and MinInterval has passed, or a heartbeat is due. It says whether it
// wrote. Run calls it; a benchmark that simulates many workers may drive it
// directly.
func (r *Reporter) Sync(ctx context.Context) (bool, error) {
	now := r.opts.Clock.Now()
	rep := r.source.Report()
	r.mu.Lock()
	due := r.last == nil || now.Sub(r.lastWrite) >= r.opts.Heartbeat ||
		(Material(*r.last, rep, r.opts.UsedFraction) && now.Sub(r.lastWrite) >= r.opts.MinInterval)
	// After a failure, retry no sooner than MinInterval.
	if due && r.failing && now.Sub(r.lastAttempt) < r.opts.MinInterval {
		due = false
	}
	r.mu.Unlock()
	if !due {
		return false, nil
	}
	if err := r.write(ctx, rep, now); err != nil {
		return false, err
	}
	return true, nil
}

// Write writes rep now, whatever was written before: for the final report
// on shutdown and for fatal errors.
func (r *Reporter) Write(ctx context.Context, rep v1alpha1.Report) error {
	return r.write(ctx, rep, r.opts.Clock.Now())
}

func (r *Reporter) write(ctx context.Context, rep v1alpha1.Report, now time.Time) error {
	rep.Time = metav1.NewTime(now)
	patch, err := Patch(rep)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	defer cancel()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: r.pod.Namespace, Name: r.pod.Name}}
	err = r.patcher.Patch(ctx, pod, client.RawPatch(types.MergePatchType, patch))

	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastAttempt = now
	if err != nil {
		if !r.failing {
			r.opts.Logger.Error("writing the capacity report failed; retrying", "pod", r.pod, "err", err)
		}
		r.failing = true
		return fmt.Errorf("patching report onto pod %s: %w", r.pod, err)
	}
	if r.failing {
		r.opts.Logger.Info("capacity report written again", "pod", r.pod)
	}
	r.failing = false
	r.last, r.lastWrite = &rep, now
	if c, ok := r.source.(Committer); ok {
		c.Committed(rep)
	}
	r.opts.Logger.Debug("capacity report written", "pod", r.pod, "usedTokens", rep.UsedTokens,
		"activeSequences", rep.ActiveSequences, "ready", rep.Ready, "draining", rep.Draining)
	return nil
}

// Last is the last report written, if any.
func (r *Reporter) Last() (v1alpha1.Report, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		return v1alpha1.Report{}, false
	}
	return *r.last, true
}

// Patch is the JSON merge patch that sets the report annotation to rep.
func Patch(rep v1alpha1.Report) ([]byte, error) {
	value, err := json.Marshal(rep)
	if err != nil {
		return nil, fmt.Errorf("encoding report: %w", err)
	}
	return json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": map[string]string{v1alpha1.AnnotationReport: string(value)}},
	})
}

// Parse reads a report from a pod's annotations; ok is false when there is
// none.
func Parse(annotations map[string]string) (rep v1alpha1.Report, ok bool, err error) {
	raw, ok := annotations[v1alpha1.AnnotationReport]
	if !ok {
		return v1alpha1.Report{}, false, nil
	}
	if err := json.Unmarshal([]byte(raw), &rep); err != nil {
		return v1alpha1.Report{}, true, fmt.Errorf("decoding report annotation: %w", err)
	}
	return rep, true, nil
}
