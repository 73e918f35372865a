package processruntime

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Container waiting reasons, as the kubelet spells them.
const (
	ReasonContainerCreating = "ContainerCreating"
	ReasonCrashLoopBackOff  = "CrashLoopBackOff"
	ReasonConfigError       = "CreateContainerConfigError"
	ReasonStartError        = "StartError"
	ReasonError             = "Error"
	ReasonCompleted         = "Completed"
)

// PodState is what the runtime knows about one worker pod; RenderStatus
// turns it into the pod's status.
type PodState struct {
	Phase     corev1.PodPhase
	PodIP     string
	StartTime time.Time
	// Message and Reason of a terminal pod.
	Message, Reason string
	Container       ContainerState
}

// ContainerState is the worker container's state; exactly one of Waiting,
// Running and Terminated is set.
type ContainerState struct {
	Waiting        *corev1.ContainerStateWaiting
	Running        *corev1.ContainerStateRunning
	Terminated     *corev1.ContainerStateTerminated
	LastTerminated *corev1.ContainerStateTerminated
	Ready          bool
	RestartCount   int32
	// ID changes on every start (a fake container ID: the process id).
	ID string
}

// RenderStatus returns current with the runtime-owned fields replaced by
// state: phase, IPs, start time, the Initialized, PodReadyToStartContainers,
// ContainersReady and Ready conditions, and the container statuses.
// Conditions owned by others (PodScheduled, readiness gates, disruption
// targets) are kept; a condition whose status does not change keeps its
// lastTransitionTime. The worker runs as the pod's first container; any
// other container is shown running, as kwok would show it.
func RenderStatus(pod *corev1.Pod, state PodState, now time.Time) corev1.PodStatus {
	st := *pod.Status.DeepCopy()
	st.Phase = state.Phase
	st.Message, st.Reason = state.Message, state.Reason
	st.HostIP = HostIP
	st.HostIPs = []corev1.HostIP{{IP: HostIP}}
	if state.PodIP != "" {
		st.PodIP = state.PodIP
		st.PodIPs = []corev1.PodIP{{IP: state.PodIP}}
	}
	if !state.StartTime.IsZero() && st.StartTime == nil {
		t := metav1.NewTime(state.StartTime)
		st.StartTime = &t
	}

	ready, podReady := readiness(pod, state)
	mtime := metav1.NewTime(now)
	setCondition(&st.Conditions, corev1.PodInitialized, true, "", mtime)
	setCondition(&st.Conditions, corev1.PodReadyToStartContainers, state.PodIP != "", "", mtime)
	notReady := ""
	if !ready {
		notReady = "ContainersNotReady"
	}
	setCondition(&st.Conditions, corev1.ContainersReady, ready, notReady, mtime)
	if !podReady && ready {
		notReady = "ReadinessGatesNotReady"
	}
	setCondition(&st.Conditions, corev1.PodReady, podReady, notReady, mtime)

	st.ContainerStatuses = nil
	for i, c := range pod.Spec.Containers {
		cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image}
		if i == 0 {
			w := state.Container
			cs.State = corev1.ContainerState{Waiting: w.Waiting, Running: w.Running, Terminated: w.Terminated}
			if w.LastTerminated != nil {
				cs.LastTerminationState = corev1.ContainerState{Terminated: w.LastTerminated}
			}
			cs.Ready = ready
			cs.RestartCount = w.RestartCount
			started := w.Running != nil
			cs.Started = &started
			if w.ID != "" {
				cs.ContainerID = "mla-local://" + w.ID
			}
		} else {
			started := true
			start := mtime
			if st.StartTime != nil {
				start = *st.StartTime
			}
			cs.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: start}}
			cs.Ready, cs.Started = true, &started
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	return st
}

// readiness is what RenderStatus writes into ContainersReady and Ready:
// the worker container runs and passes its probe, and (for Ready) every
// readiness gate's condition is True.
func readiness(pod *corev1.Pod, state PodState) (containersReady, podReady bool) {
	containersReady = state.Phase == corev1.PodRunning && state.Container.Running != nil && state.Container.Ready
	podReady = containersReady
	for _, g := range pod.Spec.ReadinessGates {
		if c := findCondition(pod.Status.Conditions, g.ConditionType); c == nil || c.Status != corev1.ConditionTrue {
			podReady = false
		}
	}
	return containersReady, podReady
}

func findCondition(conds []corev1.PodCondition, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}

func setCondition(conds *[]corev1.PodCondition, t corev1.PodConditionType, ok bool, reason string, now metav1.Time) {
	status := corev1.ConditionFalse
	if ok {
		status = corev1.ConditionTrue
	}
	if c := findCondition(*conds, t); c != nil {
		if c.Status != status {
			c.LastTransitionTime = now
		}
		c.Status, c.Reason = status, reason
		return
	}
	*conds = append(*conds, corev1.PodCondition{Type: t, Status: status, Reason: reason, LastTransitionTime: now})
}

// ReadinessDisagrees reports whether the pod's Ready or ContainersReady
// condition, as observed in the API, differs from what RenderStatus writes
// for state (a missing condition disagrees). The runtime only writes status
// when its own state changes, so a flip by someone else would otherwise
// stick: the node lifecycle controller sets Ready=False on every pod of a
// node whose lease heartbeats lag (kwok on a saturated machine), once per
// Ready->NotReady transition of the node, and never sets it back. A
// kubelet's status manager rewrites such a drift; so does the runtime, on
// the pod update that shows it. Only the condition statuses are compared:
// the rest of the status (timestamps truncated to seconds by the API
// server) never compares equal to the in-memory state. It runs on every
// pod update (each report write), so it renders nothing.
func ReadinessDisagrees(pod *corev1.Pod, state PodState) bool {
	containersReady, podReady := readiness(pod, state)
	return !conditionIs(pod.Status.Conditions, corev1.ContainersReady, containersReady) ||
		!conditionIs(pod.Status.Conditions, corev1.PodReady, podReady)
}

// conditionIs reports whether conds hold condition t with status ok.
func conditionIs(conds []corev1.PodCondition, t corev1.PodConditionType, ok bool) bool {
	want := corev1.ConditionFalse
	if ok {
		want = corev1.ConditionTrue
	}
	c := findCondition(conds, t)
	return c != nil && c.Status == want
}
