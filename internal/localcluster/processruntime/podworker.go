package processruntime

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/mla-operator/mla-operator/internal/localcluster/childproc"
)

// podWorker owns one worker pod's process from start to the pod's removal,
// like one of the kubelet's pod workers: every change to the pod, the
// process and the probe goes through its single goroutine.
type podWorker struct {
	rt      *Runtime
	updates chan *corev1.Pod
	gone    chan struct{}
	pod     *corev1.Pod

	state   PodState
	proc    *childproc.Process
	stderr  *tailBuffer
	started time.Time
	check   *ReadinessCheck
	passes  int32
	fails   int32
}

func newPodWorker(rt *Runtime, pod *corev1.Pod) *podWorker {
	return &podWorker{rt: rt, updates: make(chan *corev1.Pod, 1), gone: make(chan struct{}), pod: pod}
}

// update hands the worker the pod's latest version; an unread older one is
// dropped. Called with the runtime's lock held.
func (w *podWorker) update(pod *corev1.Pod) {
	select {
	case <-w.updates:
	default:
	}
	w.updates <- pod
}

// deleted says the pod is gone from the API (force-deleted, pod GC).
// Called with the runtime's lock held.
func (w *podWorker) deleted() {
	select {
	case <-w.gone:
	default:
		close(w.gone)
	}
}

func (w *podWorker) logf(format string, args ...any) {
	w.rt.opts.Logf("%s/%s: "+format, append([]any{w.pod.Namespace, w.pod.Name}, args...)...)
}

func (w *podWorker) run(ctx context.Context) {
	if w.pod.Status.Phase == corev1.PodSucceeded || w.pod.Status.Phase == corev1.PodFailed {
		if w.pod.DeletionTimestamp != nil {
			w.remove(ctx)
		}
		return
	}
	w.state = PodState{Phase: corev1.PodPending, PodIP: w.pod.Status.PodIP,
		Container: ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: ReasonContainerCreating}}}
	if cs := w.pod.Status.ContainerStatuses; len(cs) > 0 {
		w.state.Container.RestartCount = cs[0].RestartCount
	}
	if w.pod.DeletionTimestamp != nil {
		w.terminate(ctx)
		return
	}
	w.start(ctx)

	var restart <-chan time.Time
	var probeTick <-chan time.Time
	var ticker *time.Ticker
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	for {
		if w.check != nil && ticker == nil {
			ticker = time.NewTicker(w.check.Period)
			probeTick = ticker.C
		}
		var exited <-chan struct{}
		if w.proc != nil {
			exited = w.proc.Done()
		}
		select {
		case <-ctx.Done():
			w.stopProcess(w.rt.opts.ShutdownGrace, nil)
			return
		case <-w.gone:
			w.stopProcess(w.graceFor(w.pod), nil)
			return
		case pod := <-w.updates:
			w.pod = pod
			if pod.DeletionTimestamp != nil {
				w.terminate(ctx)
				return
			}
			w.restoreReadiness(ctx)
		case <-exited:
			restart = w.exited(ctx)
		case <-restart:
			restart = nil
			w.state.Container.RestartCount++
			w.start(ctx)
		case <-probeTick:
			w.probe(ctx)
		}
	}
}

// start assigns the pod IP (once) and starts the process.
func (w *podWorker) start(ctx context.Context) {
	fail := func(reason string, err error) {
		w.logf("cannot start: %v", err)
		w.state.Container.Waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: err.Error()}
		w.state.Container.Running, w.state.Container.Terminated = nil, nil
		w.publish(ctx)
	}
	node, err := w.rt.nodes.Get(w.pod.Spec.NodeName)
	if err != nil {
		fail(ReasonConfigError, fmt.Errorf("node %s: %w", w.pod.Spec.NodeName, err))
		return
	}
	if w.state.PodIP == "" {
		if w.state.PodIP, err = w.rt.ipam.Assign(node.Spec.PodCIDR, string(w.pod.UID)); err != nil {
			fail(ReasonConfigError, err)
			return
		}
	} else {
		w.rt.ipam.Reserve(w.state.PodIP, string(w.pod.UID))
	}
	cmd, err := BuildCommand(CommandInput{Pod: w.pod, Node: node, PodIP: w.state.PodIP,
		WorkerBinary: w.rt.opts.WorkerBinary, Kubeconfig: w.rt.opts.Kubeconfig, BaseEnv: BaseEnv()})
	if err != nil {
		fail(ReasonConfigError, err)
		return
	}
	check, ok, err := Readiness(w.pod.Spec.Containers[0], w.state.PodIP)
	if err != nil {
		fail(ReasonConfigError, err)
		return
	}
	w.check = nil
	if ok {
		w.check = &check
	}
	w.stderr = newTailBuffer(2048)
	w.proc, err = childproc.Start(childproc.Spec{
		Name:    "worker " + w.pod.Namespace + "/" + w.pod.Name,
		Path:    cmd.Path,
		Args:    cmd.Args,
		Env:     cmd.Env,
		LogPath: w.LogPath(),
		Stderr:  w.stderr,
	})
	if err != nil {
		w.state.Phase = corev1.PodRunning
		fail(ReasonStartError, err)
		return
	}
	w.started = time.Now()
	if w.state.StartTime.IsZero() {
		w.state.StartTime = w.started
	}
	w.passes, w.fails = 0, 0
	w.state.Phase = corev1.PodRunning
	w.state.Container.Waiting, w.state.Container.Terminated = nil, nil
	w.state.Container.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(w.started)}
	w.state.Container.Ready = w.check == nil
	w.state.Container.ID = strconv.Itoa(w.proc.Pid())
	w.logf("started worker pid %d on %s (%s)", w.proc.Pid(), w.pod.Spec.NodeName, w.state.PodIP)
	w.publish(ctx)
}

// LogPath is where the pod's worker logs go, across restarts.
func (w *podWorker) LogPath() string {
	return filepath.Join(w.rt.opts.LogDir, w.pod.Namespace, w.pod.Name+".log")
}

// exited records a process exit and returns the restart timer, if the
// restart policy restarts it.
func (w *podWorker) exited(ctx context.Context) <-chan time.Time {
	term := w.termination()
	w.proc = nil
	w.state.Container.Running = nil
	w.state.Container.Ready = false
	w.logf("worker exited with code %d", term.ExitCode)
	if ShouldRestart(w.pod.Spec.RestartPolicy, int(term.ExitCode)) {
		delay := w.rt.opts.Backoff.Delay(w.state.Container.RestartCount, time.Since(w.started))
		w.state.Container.LastTerminated = term
		w.state.Container.Waiting = &corev1.ContainerStateWaiting{Reason: ReasonCrashLoopBackOff,
			Message: fmt.Sprintf("back-off %s restarting failed container %s of pod %s", delay, w.pod.Spec.Containers[0].Name, w.pod.Name)}
		w.publish(ctx)
		return time.After(delay)
	}
	w.state.Container.Terminated = term
	w.state.Phase = corev1.PodSucceeded
	if term.ExitCode != 0 {
		w.state.Phase = corev1.PodFailed
	}
	w.publish(ctx)
	return nil
}

func (w *podWorker) termination() *corev1.ContainerStateTerminated {
	code := w.proc.ExitCode()
	reason := ReasonCompleted
	if code != 0 {
		reason = ReasonError
	}
	return &corev1.ContainerStateTerminated{
		ExitCode:    int32(code),
		Reason:      reason,
		Message:     w.stderr.Lines(80),
		StartedAt:   metav1.NewTime(w.started),
		FinishedAt:  metav1.Now(),
		ContainerID: "mla-local://" + w.state.Container.ID,
	}
}

func (w *podWorker) probe(ctx context.Context) {
	if w.proc == nil || w.check == nil {
		return
	}
	ok := probe(ctx, w.rt.probes, *w.check)
	before := w.state.Container.Ready
	if ok {
		w.passes, w.fails = w.passes+1, 0
		if w.passes >= w.check.SuccessThreshold {
			w.state.Container.Ready = true
		}
	} else {
		w.passes, w.fails = 0, w.fails+1
		if w.fails >= w.check.FailureThreshold {
			w.state.Container.Ready = false
		}
	}
	if w.state.Container.Ready != before {
		w.publish(ctx)
	}
}

func (w *podWorker) graceFor(pod *corev1.Pod) time.Duration {
	switch {
	case pod.DeletionGracePeriodSeconds != nil:
		return time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	case pod.Spec.TerminationGracePeriodSeconds != nil:
		return time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	default:
		return 30 * time.Second
	}
}

// stopProcess sends SIGTERM, waits up to grace (or until stop fires), then
// SIGKILL, and records the termination.
func (w *podWorker) stopProcess(grace time.Duration, stop <-chan struct{}) {
	if w.proc == nil {
		return
	}
	_ = w.proc.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-w.proc.Done():
	case <-t.C:
		w.logf("worker did not stop within %s: killing it", grace)
	case <-stop:
	}
	_ = w.proc.Signal(syscall.SIGKILL)
	<-w.proc.Done()
	w.state.Container.Terminated = w.termination()
	w.state.Container.Running, w.state.Container.Waiting = nil, nil
	w.state.Container.Ready = false
	w.proc = nil
}

// terminate stops the worker of a pod being deleted within its grace period
// (a Ctrl-C of the harness cuts it to ShutdownGrace), writes the final
// status and removes the pod, as the kubelet does once its containers are
// gone.
func (w *podWorker) terminate(ctx context.Context) {
	grace := w.graceFor(w.pod)
	w.logf("stopping worker (grace %s)", grace)
	shutdown, finished := make(chan struct{}), make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			select {
			case <-time.After(w.rt.opts.ShutdownGrace):
				close(shutdown)
			case <-finished:
			}
		case <-finished:
		}
	}()
	defer close(finished)
	if w.proc != nil {
		w.stopProcess(grace, shutdown)
		w.state.Phase = corev1.PodSucceeded
		if w.state.Container.Terminated.ExitCode != 0 {
			w.state.Phase = corev1.PodFailed
		}
	} else if w.state.Container.Waiting != nil {
		// Never ran or waiting to restart: nothing to stop.
		w.state.Container.Waiting = nil
		w.state.Container.Terminated = &corev1.ContainerStateTerminated{ExitCode: 0, Reason: ReasonCompleted, FinishedAt: metav1.Now()}
		w.state.Phase = corev1.PodSucceeded
	}
	if ctx.Err() != nil {
		return
	}
	w.publish(ctx)
	w.remove(ctx)
}

// remove deletes the pod for good (grace 0, this UID only).
func (w *podWorker) remove(ctx context.Context) {
	err := w.rt.opts.Client.CoreV1().Pods(w.pod.Namespace).Delete(ctx, w.pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To[int64](0),
		Preconditions:      &metav1.Preconditions{UID: &w.pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		w.logf("removing pod: %v", err)
	}
}

// restoreReadiness rewrites the status of a pod whose readiness conditions,
// as just observed, disagree with the worker's state (see
// ReadinessDisagrees); it writes nothing when they agree, so the pod
// updates the runtime's own writes and the worker's reports cause stay
// free. A stale update (one that predates the runtime's last write) costs
// one conflicting write and a get, after which the fresh pod agrees.
func (w *podWorker) restoreReadiness(ctx context.Context) {
	if w.write(ctx, func(p *corev1.Pod) bool { return ReadinessDisagrees(p, w.state) }) {
		w.logf("rewrote pod readiness conditions that disagreed with the worker (container ready %v)", w.state.Container.Ready)
	}
}

// publish writes the state into the pod's status, retrying on conflicts
// with the worker's own report writes.
func (w *podWorker) publish(ctx context.Context) {
	_ = w.write(ctx, nil)
}

// write renders the state into the pod's status and updates it, retrying
// on conflicts against the latest pod; a non-nil needed can call the write
// off for that pod. It reports whether a status update went through.
func (w *podWorker) write(ctx context.Context, needed func(*corev1.Pod) bool) (wrote bool) {
	pods := w.rt.opts.Client.CoreV1().Pods(w.pod.Namespace)
	current := w.pod
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		if needed != nil && !needed(current) {
			return nil
		}
		st := RenderStatus(current, w.state, time.Now())
		if equality.Semantic.DeepEqual(st, current.Status) {
			return nil
		}
		next := current.DeepCopy()
		next.Status = st
		_, err := pods.UpdateStatus(ctx, next, metav1.UpdateOptions{})
		wrote = err == nil
		if apierrors.IsConflict(err) {
			fresh, gerr := pods.Get(ctx, w.pod.Name, metav1.GetOptions{})
			if gerr != nil {
				return gerr
			}
			if fresh.UID != w.pod.UID {
				return nil
			}
			current = fresh
		}
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
		w.logf("updating status: %v", err)
	}
	return wrote
}
