package processruntime

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mla-operator/mla-operator/test/builders"
)

func condition(st corev1.PodStatus, t corev1.PodConditionType) *corev1.PodCondition {
	return findCondition(st.Conditions, t)
}

func TestRenderStatus(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	running := ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(t0)}, ID: "42"}
	readyRunning := running
	readyRunning.Ready = true
	crashLoop := ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: ReasonCrashLoopBackOff}, RestartCount: 3,
		LastTerminated: &corev1.ContainerStateTerminated{ExitCode: 1, Message: "boom"}, Ready: true}
	cases := map[string]struct {
		state     PodState
		gates     []corev1.PodReadinessGate
		wantReady bool
		wantPhase corev1.PodPhase
		check     func(t *testing.T, st corev1.PodStatus)
	}{
		"creating": {
			state:     PodState{Phase: corev1.PodPending, Container: ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: ReasonContainerCreating}}},
			wantPhase: corev1.PodPending,
			check: func(t *testing.T, st corev1.PodStatus) {
				if st.PodIP != "" || condition(st, corev1.PodReadyToStartContainers).Status != corev1.ConditionFalse {
					t.Errorf("pod IP %q before it is assigned", st.PodIP)
				}
			},
		},
		"running, probe not yet passed": {
			state:     PodState{Phase: corev1.PodRunning, PodIP: "127.20.1.1", StartTime: t0, Container: running},
			wantPhase: corev1.PodRunning,
			check: func(t *testing.T, st corev1.PodStatus) {
				if st.PodIP != "127.20.1.1" || len(st.PodIPs) != 1 || st.HostIP != HostIP || st.StartTime == nil {
					t.Errorf("addresses %q %v %q start %v", st.PodIP, st.PodIPs, st.HostIP, st.StartTime)
				}
				if cs := st.ContainerStatuses[0]; cs.ContainerID != "mla-local://42" || cs.State.Running == nil || !*cs.Started {
					t.Errorf("container status %+v", cs)
				}
			},
		},
		"ready":                       {state: PodState{Phase: corev1.PodRunning, PodIP: "127.20.1.1", Container: readyRunning}, wantReady: true, wantPhase: corev1.PodRunning},
		"ready but a gate is not met": {state: PodState{Phase: corev1.PodRunning, PodIP: "127.20.1.1", Container: readyRunning}, gates: []corev1.PodReadinessGate{{ConditionType: "example.com/gate"}}, wantPhase: corev1.PodRunning},
		"crash loop is never ready": {
			state: PodState{Phase: corev1.PodRunning, PodIP: "127.20.1.1", Container: crashLoop}, wantPhase: corev1.PodRunning,
			check: func(t *testing.T, st corev1.PodStatus) {
				cs := st.ContainerStatuses[0]
				if cs.RestartCount != 3 || cs.State.Waiting.Reason != ReasonCrashLoopBackOff || cs.LastTerminationState.Terminated.Message != "boom" {
					t.Errorf("container status %+v", cs)
				}
			},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			pod := builders.Pod("ns", "p").Obj()
			pod.Spec.ReadinessGates = tc.gates
			pod.Status = corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}}}
			st := RenderStatus(pod, tc.state, t0)
			if st.Phase != tc.wantPhase {
				t.Errorf("phase = %s, want %s", st.Phase, tc.wantPhase)
			}
			if got := condition(st, corev1.PodReady).Status == corev1.ConditionTrue; got != tc.wantReady {
				t.Errorf("Ready = %v, want %v", got, tc.wantReady)
			}
			if got := st.ContainerStatuses[0].Ready; got != (tc.wantReady || len(tc.gates) > 0 && tc.state.Container.Ready) {
				t.Errorf("container ready = %v", got)
			}
			if c := condition(st, corev1.PodScheduled); c == nil || c.Status != corev1.ConditionTrue {
				t.Errorf("PodScheduled condition lost: %+v", st.Conditions)
			}
			if tc.check != nil {
				tc.check(t, st)
			}
		})
	}
}

func TestRenderStatusKeepsTransitionTimes(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	pod := builders.Pod("ns", "p").Obj()
	state := PodState{Phase: corev1.PodRunning, PodIP: "127.20.1.1", Container: ContainerState{Running: &corev1.ContainerStateRunning{}, Ready: true}}
	pod.Status = RenderStatus(pod, state, t0)
	again := RenderStatus(pod, state, t0.Add(time.Minute))
	if got := condition(again, corev1.PodReady).LastTransitionTime.Time; !got.Equal(t0) {
		t.Errorf("unchanged Ready moved its transition time to %s", got)
	}
	state.Container.Ready = false
	changed := RenderStatus(pod, state, t0.Add(time.Minute))
	if got := condition(changed, corev1.PodReady).LastTransitionTime.Time; !got.Equal(t0.Add(time.Minute)) {
		t.Errorf("Ready flip kept transition time %s", got)
	}
}

func TestReadinessDisagrees(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	readyState := PodState{Phase: corev1.PodRunning, PodIP: "127.20.1.1", StartTime: t0,
		Container: ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(t0)}, Ready: true}}
	notReadyState := readyState
	notReadyState.Container.Ready = false
	set := func(conds []corev1.PodCondition, ct corev1.PodConditionType, s corev1.ConditionStatus) []corev1.PodCondition {
		out := append([]corev1.PodCondition(nil), conds...)
		findCondition(out, ct).Status = s
		return out
	}
	cases := map[string]struct {
		state   PodState
		observe func(written corev1.PodStatus) corev1.PodStatus
		gates   []corev1.PodReadinessGate
		want    bool
	}{
		"as written": {state: readyState, want: false},
		"node lifecycle controller set Ready=False on a ready worker": {state: readyState, want: true,
			observe: func(st corev1.PodStatus) corev1.PodStatus {
				st.Conditions = set(st.Conditions, corev1.PodReady, corev1.ConditionFalse)
				return st
			}},
		"ContainersReady=False on a ready worker": {state: readyState, want: true,
			observe: func(st corev1.PodStatus) corev1.PodStatus {
				st.Conditions = set(st.Conditions, corev1.ContainersReady, corev1.ConditionFalse)
				return st
			}},
		"Ready=True on a worker whose probe fails": {state: notReadyState, want: true,
			observe: func(st corev1.PodStatus) corev1.PodStatus {
				st.Conditions = set(set(st.Conditions, corev1.PodReady, corev1.ConditionTrue), corev1.ContainersReady, corev1.ConditionTrue)
				return st
			}},
		"conditions missing": {state: readyState, want: true,
			observe: func(st corev1.PodStatus) corev1.PodStatus {
				st.Conditions = nil
				return st
			}},
		"only timestamps differ (API server truncation)": {state: readyState, want: false,
			observe: func(st corev1.PodStatus) corev1.PodStatus {
				st.StartTime = nil
				st.ContainerStatuses[0].State.Running.StartedAt = metav1.NewTime(t0.Add(time.Second))
				for i := range st.Conditions {
					st.Conditions[i].LastTransitionTime = metav1.NewTime(t0.Add(time.Hour))
				}
				return st
			}},
		"a readiness gate is met since the last write": {state: readyState, want: true,
			gates: []corev1.PodReadinessGate{{ConditionType: "example.com/gate"}},
			observe: func(st corev1.PodStatus) corev1.PodStatus {
				st.Conditions = append(st.Conditions, corev1.PodCondition{Type: "example.com/gate", Status: corev1.ConditionTrue})
				return st
			}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			pod := builders.Pod("ns", "p").Obj()
			pod.Spec.ReadinessGates = tc.gates
			pod.Status = corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}}}
			pod.Status = RenderStatus(pod, tc.state, t0)
			if tc.observe != nil {
				pod.Status = tc.observe(*pod.Status.DeepCopy())
			}
			if got := ReadinessDisagrees(pod, tc.state); got != tc.want {
				t.Errorf("ReadinessDisagrees = %v, want %v (conditions %+v)", got, tc.want, pod.Status.Conditions)
			}
			if tc.want {
				pod.Status = RenderStatus(pod, tc.state, t0.Add(time.Minute))
				if ReadinessDisagrees(pod, tc.state) {
					t.Errorf("still disagrees after the rewrite: %+v", pod.Status.Conditions)
				}
			}
		})
	}
}
