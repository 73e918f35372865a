package builders

import (
	"encoding/json"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// PodBuilder builds a pod.
type PodBuilder struct{ pod corev1.Pod }

// Pod starts a builder for a pending pod with one container.
func Pod(namespace, name string) *PodBuilder {
	return &PodBuilder{pod: corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{}, Annotations: map[string]string{}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "busybox"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodPending},
	}}
}

// WorkerOf labels the pod as a worker of service.
func (b *PodBuilder) WorkerOf(service string) *PodBuilder {
	b.pod.Labels[v1alpha1.LabelService] = service
	b.pod.Labels[v1alpha1.LabelComponent] = v1alpha1.ComponentWorker
	b.pod.Labels[v1alpha1.LabelManagedBy] = v1alpha1.ManagedByValue
	return b
}

// ControlledBy makes the MLAService service, with uid, the pod's controller,
// as the operator's own workers have it.
func (b *PodBuilder) ControlledBy(service string, uid types.UID) *PodBuilder {
	b.pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: v1alpha1.GroupVersion.String(), Kind: "MLAService",
		Name: service, UID: uid, Controller: ptr.To(true)}}
	return b
}

// OnNode binds the pod to node.
func (b *PodBuilder) OnNode(node string) *PodBuilder {
	b.pod.Spec.NodeName = node
	return b
}

// GPURequest requests n of the GPU resource.
func (b *PodBuilder) GPURequest(n int) *PodBuilder {
	q := *resource.NewQuantity(int64(n), resource.DecimalSI)
	c := &b.pod.Spec.Containers[0]
	c.Resources.Requests = corev1.ResourceList{v1alpha1.DefaultGPUResource: q}
	c.Resources.Limits = corev1.ResourceList{v1alpha1.DefaultGPUResource: q}
	return b
}

// Running sets phase Running and the Ready condition.
func (b *PodBuilder) Running(ready bool) *PodBuilder {
	b.pod.Status.Phase = corev1.PodRunning
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	b.pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}
	return b
}

// Phase sets the pod phase.
func (b *PodBuilder) Phase(p corev1.PodPhase) *PodBuilder {
	b.pod.Status.Phase = p
	return b
}

// Report sets the worker report annotation.
func (b *PodBuilder) Report(r v1alpha1.Report) *PodBuilder {
	if r.Time.IsZero() {
		r.Time = metav1.NewTime(time.Now())
	}
	raw, err := json.Marshal(r)
	if err != nil {
		panic(err)
	}
	b.pod.Annotations[v1alpha1.AnnotationReport] = string(raw)
	return b
}

// Label sets a label.
func (b *PodBuilder) Label(k, v string) *PodBuilder {
	b.pod.Labels[k] = v
	return b
}

// Annotation sets an annotation.
func (b *PodBuilder) Annotation(k, v string) *PodBuilder {
	b.pod.Annotations[k] = v
	return b
}

// Obj returns a copy of the pod.
func (b *PodBuilder) Obj() *corev1.Pod { return b.pod.DeepCopy() }
