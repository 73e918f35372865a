// Package workerpod builds an MLAService's worker pods. It is pure: given
// the service, its capacity configuration and a node chosen by placement,
// it returns the pod to create. A pod is pinned to its node by required node
// affinity (the way the DaemonSet controller pins pods), so kube-scheduler
// still checks resources and taints and binds it.
package workerpod

import (
	"cmp"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/autoscale"
	"github.com/mla-operator/mla-operator/internal/capacity"
)

// Defaults of the CRD, for objects built in code without them.
const (
	DefaultImage = "ghcr.io/mla-operator/worker:latest"
	DefaultPort  = 8080
	// DefaultServiceAccount is the account the operator creates for workers
	// when spec.worker.serviceAccountName is empty.
	DefaultServiceAccount = "mla-worker"
	// ContainerName is the worker container's name.
	ContainerName = "worker"
	// PortName names the worker's API port; probes refer to it.
	PortName = "http"
	// WeightsMountPath is where spec.model.source is mounted.
	WeightsMountPath = "/weights"
	// DefaultTerminationGrace lets a stopping worker finish the sequences
	// it holds: as long as the default drain grace.
	DefaultTerminationGrace = autoscale.DefaultDrainGrace
)

// revisionInput is every spec field a worker is built from. A change to any
// of them makes new pods; fields that only steer placement or scaling
// (replicas, autoscaling, rollout, strategy, selector) do not.
type revisionInput struct {
	Model           v1alpha1.ModelSpec   `json:"model"`
	KVCache         v1alpha1.KVCacheSpec `json:"kvCache"`
	ContextLength   int64                `json:"contextLength"`
	GPUsPerWorker   int32                `json:"gpusPerWorker"`
	GPUResourceName string               `json:"gpuResourceName"`
	Tolerations     []corev1.Toleration  `json:"tolerations,omitempty"`
	Worker          v1alpha1.WorkerSpec  `json:"worker"`
	Autoscaling     *autoscalingRevision `json:"autoscaling,omitempty"`
}

// autoscalingRevision is the one autoscaling field the pod depends on: the
// drain grace sets its termination grace period.
type autoscalingRevision struct {
	DrainGracePeriod *metav1.Duration `json:"drainGracePeriod,omitempty"`
}

// Revision is a short, stable hash of the spec fields a worker is built
// from; it labels worker pods (LabelRevision) and names them.
func Revision(spec *v1alpha1.MLAServiceSpec) string {
	in := revisionInput{Model: spec.Model, KVCache: spec.KVCache, ContextLength: spec.ContextLength,
		GPUsPerWorker: max(spec.GPUsPerWorker, 1), GPUResourceName: gpuResource(spec),
		Tolerations: spec.Placement.Tolerations, Worker: spec.Worker}
	if a := spec.Autoscaling; a != nil && a.DrainGracePeriod != nil {
		in.Autoscaling = &autoscalingRevision{DrainGracePeriod: a.DrainGracePeriod}
	}
	raw, err := json.Marshal(in) // map keys are sorted: stable
	if err != nil {
		panic(fmt.Sprintf("marshalling revision input: %v", err)) // plain data cannot fail
	}
	h := fnv.New64a()
	h.Write(raw)
	return fmt.Sprintf("%010x", h.Sum64()&0xffffffffff)
}

// Name is the deterministic name of the ordinal-th worker of a revision.
// Deterministic names make creates idempotent: a create repeated from a
// stale cache, or by a new leader, fails with AlreadyExists instead of
// adding a worker.
func Name(service, revision string, ordinal int) string {
	return fmt.Sprintf("%s-%s-%d", service, revision, ordinal)
}

// Params is what a worker pod is built from.
type Params struct {
	Service  *v1alpha1.MLAService
	Config   capacity.Config
	Revision string
	Name     string
	// Node is where placement put the worker.
	Node string
	// GPUProduct and Estimate are what placement predicted there.
	GPUProduct string
	Estimate   capacity.Estimate
}

// Build returns the worker pod.
func Build(p Params) *corev1.Pod {
	svc := p.Service
	spec := &svc.Spec
	w := &spec.Worker
	port := cmp.Or(w.Port, DefaultPort)
	res := corev1.ResourceName(gpuResource(spec))

	labels := map[string]string{}
	for k, v := range w.Labels {
		labels[k] = v
	}
	labels[v1alpha1.LabelService] = svc.Name
	labels[v1alpha1.LabelRevision] = p.Revision
	labels[v1alpha1.LabelComponent] = v1alpha1.ComponentWorker
	labels[v1alpha1.LabelManagedBy] = v1alpha1.ManagedByValue

	annotations := map[string]string{}
	for k, v := range w.Annotations {
		annotations[k] = v
	}
	annotations[v1alpha1.AnnotationPredictedTokens] = strconv.FormatInt(p.Estimate.Tokens, 10)
	annotations[v1alpha1.AnnotationGPUProduct] = p.GPUProduct

	resources := *w.Resources.DeepCopy()
	gpus := *resource.NewQuantity(int64(p.Config.GPUs), resource.DecimalSI)
	if resources.Limits == nil {
		resources.Limits = corev1.ResourceList{}
	}
	if resources.Requests == nil {
		resources.Requests = corev1.ResourceList{}
	}
	resources.Limits[res] = gpus
	resources.Requests[res] = gpus // extended resources: requests equal limits

	container := corev1.Container{
		Name:            ContainerName,
		Image:           cmp.Or(w.Image, DefaultImage),
		ImagePullPolicy: w.ImagePullPolicy,
		Args:            append([]string(nil), w.Args...),
		Env:             Env(svc, p.Config, port),
		Ports:           []corev1.ContainerPort{{Name: PortName, ContainerPort: port, Protocol: corev1.ProtocolTCP}},
		Resources:       resources,
		// The worker sizes its pool at start-up; give it five minutes
		// before liveness applies.
		StartupProbe:   httpProbe("/healthz", 5, 60),
		ReadinessProbe: httpProbe("/readyz", 5, 3),
		LivenessProbe:  httpProbe("/healthz", 10, 3),
		SecurityContext: &corev1.SecurityContext{
			AllowPrivilegeEscalation: ptr.To(false),
			RunAsNonRoot:             ptr.To(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:       svc.Namespace,
			Name:            p.Name,
			Labels:          labels,
			Annotations:     annotations,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(svc, v1alpha1.GroupVersion.WithKind("MLAService"))},
		},
		Spec: corev1.PodSpec{
			Containers:                    []corev1.Container{container},
			Affinity:                      pinTo(p.Node),
			Tolerations:                   append([]corev1.Toleration(nil), spec.Placement.Tolerations...),
			ServiceAccountName:            cmp.Or(w.ServiceAccountName, DefaultServiceAccount),
			AutomountServiceAccountToken:  ptr.To(true), // the worker patches its own pod
			ImagePullSecrets:              append([]corev1.LocalObjectReference(nil), w.ImagePullSecrets...),
			PriorityClassName:             w.PriorityClassName,
			TerminationGracePeriodSeconds: ptr.To(TerminationGraceSeconds(spec)),
			RestartPolicy:                 corev1.RestartPolicyAlways,
			EnableServiceLinks:            ptr.To(false),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr.To(true),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
		},
	}
	if src := spec.Model.Source; src != nil {
		vol := corev1.Volume{Name: "weights"}
		switch {
		case src.PersistentVolumeClaim != nil:
			pvc := *src.PersistentVolumeClaim
			pvc.ReadOnly = true
			vol.PersistentVolumeClaim = &pvc
		case src.HostPath != nil:
			vol.HostPath = &corev1.HostPathVolumeSource{Path: *src.HostPath, Type: ptr.To(corev1.HostPathDirectory)}
		}
		pod.Spec.Volumes = []corev1.Volume{vol}
		pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "weights", MountPath: WeightsMountPath, ReadOnly: true}}
	}
	return pod
}

// TerminationGraceSeconds is the pod's termination grace: the spec's, else
// long enough to drain (the drain grace when autoscaling sets a longer one).
func TerminationGraceSeconds(spec *v1alpha1.MLAServiceSpec) int64 {
	if g := spec.Worker.TerminationGracePeriodSeconds; g != nil {
		return *g
	}
	d := DefaultTerminationGrace
	if spec.Autoscaling != nil {
		d = max(d, autoscale.DrainGrace(spec.Autoscaling))
	}
	return int64(d / time.Second)
}

// Env is the worker container's environment: every field the worker needs
// to rebuild the same capacity.Config the operator placed it with, its
// identity through the downward API, then the user's variables (which win
// over ours of the same name).
func Env(svc *v1alpha1.MLAService, cfg capacity.Config, port int32) []corev1.EnvVar {
	g := cfg.Model.Geometry
	ours := []corev1.EnvVar{
		{Name: v1alpha1.EnvServiceName, Value: svc.Name},
		{Name: v1alpha1.EnvPort, Value: strconv.Itoa(int(port))},
		{Name: v1alpha1.EnvModelName, Value: cfg.Model.Name},
		{Name: v1alpha1.EnvLayers, Value: strconv.Itoa(g.Layers)},
		{Name: v1alpha1.EnvKVLoRARank, Value: strconv.Itoa(g.KVLoRARank)},
		{Name: v1alpha1.EnvQKRopeHeadDim, Value: strconv.Itoa(g.QKRopeHeadDim)},
		{Name: v1alpha1.EnvQKNopeHeadDim, Value: strconv.Itoa(g.QKNopeHeadDim)},
		{Name: v1alpha1.EnvAttentionHeads, Value: strconv.Itoa(g.AttentionHeads)},
		{Name: v1alpha1.EnvWeightsBytes, Value: strconv.FormatInt(cfg.Model.WeightsBytes, 10)},
		{Name: v1alpha1.EnvContextLength, Value: strconv.FormatInt(svc.Spec.ContextLength, 10)},
		{Name: v1alpha1.EnvKVDType, Value: string(cfg.DType)},
		{Name: v1alpha1.EnvPageSize, Value: strconv.Itoa(cfg.PageSize)},
		{Name: v1alpha1.EnvGPUMemoryUtilization, Value: strconv.FormatFloat(cfg.GPUMemoryUtilization, 'g', -1, 64)},
		{Name: v1alpha1.EnvReserveBytes, Value: strconv.FormatInt(cfg.ReserveBytes, 10)},
		{Name: v1alpha1.EnvGPUs, Value: strconv.Itoa(cfg.GPUs)},
		{Name: v1alpha1.EnvSoftmaxScale, Value: strconv.FormatFloat(g.SoftmaxScale(), 'g', -1, 64)},
		fieldEnv(v1alpha1.EnvPodName, "metadata.name"),
		fieldEnv(v1alpha1.EnvPodNamespace, "metadata.namespace"),
		fieldEnv(v1alpha1.EnvNodeName, "spec.nodeName"),
		fieldEnv(v1alpha1.EnvPodIP, "status.podIP"),
	}
	user := map[string]bool{}
	for _, e := range svc.Spec.Worker.Env {
		user[e.Name] = true
	}
	env := make([]corev1.EnvVar, 0, len(ours)+len(svc.Spec.Worker.Env))
	for _, e := range ours {
		if !user[e.Name] {
			env = append(env, e)
		}
	}
	for _, e := range svc.Spec.Worker.Env {
		env = append(env, *e.DeepCopy())
	}
	return env
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

func httpProbe(path string, period, failures int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString(PortName)}},
		PeriodSeconds:    period,
		TimeoutSeconds:   2,
		FailureThreshold: failures,
	}
}

// pinTo requires the pod's node by name through matchFields, which, unlike
// spec.nodeName, leaves binding (and its resource and taint checks) to the
// scheduler.
func pinTo(node string) *corev1.Affinity {
	return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
		}}},
	}}
}

func gpuResource(spec *v1alpha1.MLAServiceSpec) string {
	return cmp.Or(spec.Placement.GPUResourceName, v1alpha1.DefaultGPUResource)
}
