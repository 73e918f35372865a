// Package controllers holds the MLAService reconciler: it reads the
// cluster, asks the pure packages what to do (placement, workerplan,
// autoscale, statusmanager) and carries it out through the managers
// (podmanager, workeraccount, statusmanager.Writer).
//
// The flow: MLAService -> placement (which nodes) -> workerpod (the pods)
// -> the worker runs and reports on its pod (workerreport) -> statusmanager
// (status and conditions) -> autoscale (replicas) -> around again.
package controllers

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/autoscale"
	"github.com/mla-operator/mla-operator/internal/capacity"
	"github.com/mla-operator/mla-operator/internal/nodeinfo"
	"github.com/mla-operator/mla-operator/internal/placement"
	"github.com/mla-operator/mla-operator/internal/podmanager"
	"github.com/mla-operator/mla-operator/internal/reportclock"
	"github.com/mla-operator/mla-operator/internal/statusmanager"
	"github.com/mla-operator/mla-operator/internal/workeraccount"
	"github.com/mla-operator/mla-operator/internal/workerplan"
	"github.com/mla-operator/mla-operator/internal/workerpod"
	"github.com/mla-operator/mla-operator/internal/workerreport"
)

// Options tune the reconciler; the zero value takes the defaults.
type Options struct {
	// ReportStaleAfter is how old a worker's report may be and still count.
	ReportStaleAfter time.Duration
	// NodeLostGrace is how long a node may be NotReady before its workers
	// are placed elsewhere.
	NodeLostGrace time.Duration
	// UnschedulableGrace is how long the scheduler may refuse a worker its
	// node before the worker is placed again.
	UnschedulableGrace time.Duration
	// UnplacedRetry is how soon to retry placing workers that found no node.
	UnplacedRetry time.Duration
	// MaxConcurrentReconciles bounds parallel reconciles.
	MaxConcurrentReconciles int
}

// Defaults.
const (
	DefaultNodeLostGrace      = 2 * time.Minute
	DefaultUnplacedRetry      = 15 * time.Second
	DefaultUnschedulableGrace = time.Minute
	// autoscalePeriod bounds how often an autoscaled service is looked at
	// when nothing else changes.
	maxAutoscalePeriod = 15 * time.Second
	minAutoscalePeriod = time.Second
)

func (o Options) withDefaults() Options {
	o.ReportStaleAfter = cmp.Or(o.ReportStaleAfter, workerreport.DefaultStaleAfter)
	o.NodeLostGrace = cmp.Or(o.NodeLostGrace, DefaultNodeLostGrace)
	o.UnplacedRetry = cmp.Or(o.UnplacedRetry, DefaultUnplacedRetry)
	o.UnschedulableGrace = cmp.Or(o.UnschedulableGrace, DefaultUnschedulableGrace)
	o.MaxConcurrentReconciles = cmp.Or(o.MaxConcurrentReconciles, 1)
	return o
}

// MLAServiceReconciler reconciles MLAServices.
type MLAServiceReconciler struct {
	Client client.Client
	// APIReader reads from the API server where the cache may lag (the
	// manager's API reader).
	APIReader client.Reader
	Recorder  events.EventRecorder
	Pods      *podmanager.Manager
	Status    *statusmanager.Writer
	Clock     clock.PassiveClock
	Options   Options

	mu          sync.Mutex
	stabilizers map[types.NamespacedName]*autoscale.Stabilizer
	// waiting holds the services that need room a node change could make:
	// workers left unplaced, or a spec no GPU can serve yet.
	waiting map[types.NamespacedName]bool
	// reports ages worker reports by this operator's clock, from when it
	// saw each report's time change, so the nodes' clocks need not agree
	// with it. The watch notes heartbeats (workerChanged), reconciles
	// note what they list, and pods are forgotten when deleted, when a
	// reconcile no longer finds them, or with their service.
	reports reportclock.Tracker
}

// NewReconciler wires a reconciler to mgr.
func NewReconciler(mgr ctrl.Manager, opts Options) *MLAServiceReconciler {
	return &MLAServiceReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("mla-operator"),
		Pods:      &podmanager.Manager{Client: mgr.GetClient()},
		Status:    &statusmanager.Writer{Client: mgr.GetClient(), Reader: mgr.GetAPIReader()},
		Clock:     clock.RealClock{},
		Options:   opts.withDefaults(),
	}
}

// +kubebuilder:rbac:groups=inference.mla.dev,resources=mlaservices,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=inference.mla.dev,resources=mlaservices/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=inference.mla.dev,resources=mlaservices/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;create;delete;patch
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

// podNodeIndex indexes worker pods in the cache by the node they run on or
// are pinned to, so a node change finds its services without a scan.
const podNodeIndex = "mla.dev/worker-node"

// SetupWithManager registers the reconciler: MLAServices, the pods they
// own, and node changes that alter what placement can do.
func (r *MLAServiceReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &corev1.Pod{}, podNodeIndex, workerNode); err != nil {
		return fmt.Errorf("indexing worker pods by node: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		// The operator's own status writes need no second reconcile; spec
		// changes (the scale subresource included) bump the generation.
		For(&v1alpha1.MLAService{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&corev1.Pod{}, builder.WithPredicates(r.workerChanged())).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.servicesForNode), builder.WithPredicates(nodeChanged())).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Options.MaxConcurrentReconciles}).
		Named("mlaservice").
		Complete(r)
}

func workerNode(obj client.Object) []string {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Labels[v1alpha1.LabelComponent] != v1alpha1.ComponentWorker {
		return nil
	}
	if n := nodeinfo.PodNode(pod); n != "" {
		return []string{n}
	}
	return nil
}

// servicesForNode enqueues the services a node change can matter to: those
// with a worker on the node (its readiness, taints or labels decide whether
// the worker stays) and those waiting for room (workers left unplaced, or no
// GPU fits). A service whose workers all run elsewhere has nothing to do;
// enqueueing every service for every node change kept all 100 services of
// the 1,000-node scale run in the queue while nodes flapped (4,034 node
// changes in 4 minutes). Such a service's status.gpuProducts catches up at
// its next reconcile.
func (r *MLAServiceReconciler) servicesForNode(ctx context.Context, node client.Object) []reconcile.Request {
	nodeChanges.Inc()
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.MatchingFields{podNodeIndex: node.GetName()}, client.UnsafeDisableDeepCopy); err != nil {
		log.FromContext(ctx).Error(err, "listing the workers of a node; enqueueing every service", "node", node.GetName())
		return r.allServices(ctx)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return servicesToWake(pods.Items, r.waiting)
}

// servicesToWake is the services owning one of pods and those waiting for
// room, each once, sorted.
func servicesToWake(pods []corev1.Pod, waiting map[types.NamespacedName]bool) []reconcile.Request {
	keys := map[types.NamespacedName]bool{}
	for k, w := range waiting {
		if w {
			keys[k] = true
		}
	}
	for i := range pods {
		if k, ok := controllingService(&pods[i]); ok {
			keys[k] = true
		}
	}
	reqs := make([]reconcile.Request, 0, len(keys))
	for k := range keys {
		reqs = append(reqs, reconcile.Request{NamespacedName: k})
	}
	slices.SortFunc(reqs, func(a, b reconcile.Request) int { return strings.Compare(a.String(), b.String()) })
	return reqs
}

// allServices enqueues every service.
func (r *MLAServiceReconciler) allServices(ctx context.Context) []reconcile.Request {
	var list v1alpha1.MLAServiceList
	if err := r.Client.List(ctx, &list); err != nil {
		log.FromContext(ctx).Error(err, "listing MLAServices for a node change")
		return nil
	}
	reqs := make([]reconcile.Request, len(list.Items))
	for i, s := range list.Items {
		reqs[i] = reconcile.Request{NamespacedName: types.NamespacedName{Namespace: s.Namespace, Name: s.Name}}
	}
	return reqs
}

// workerChanged passes pod events except a worker's heartbeat: an update
// whose only change is the time inside an otherwise equal report. With 1,000
// workers heartbeating every 30 s those are most pod events, and each would
// cost a reconcile of its service. Staleness needs no event: the reconciler
// requeues itself for the moment the oldest counted report would go stale.
//
// This is also where the operator sees each heartbeat as it arrives, so it
// notes the report's new time here (r.reports), by its own clock: noted
// only at the next reconcile, a heartbeat could count from up to a
// staleness bound after it was written. A heartbeat still passes when the
// operator had not seen the pod's report or no longer counted it as fresh:
// the worker may count again, and nothing else would wake its service.
// A pod seen without a report is noted as such, so that its first report
// counts from when it appears, not from the worker's clock (reportclock).
// Deleted pods are forgotten.
func (r *MLAServiceReconciler) workerChanged() predicate.Predicate {
	return predicate.Funcs{
		CreateFunc: func(e event.CreateEvent) bool {
			r.noteUnreported(e.Object)
			return true
		},
		UpdateFunc: func(e event.UpdateEvent) bool {
			a, ok1 := e.ObjectOld.(*corev1.Pod)
			b, ok2 := e.ObjectNew.(*corev1.Pod)
			if !ok1 || !ok2 {
				return true
			}
			// One parse of each report per event: this runs on every pod
			// event of the cluster.
			rb, err := workerreport.Parse(b)
			if err != nil {
				return true
			}
			key, ours := reportKey(b)
			if rb == nil {
				if ours {
					r.reports.Unreported(key, r.Clock.Now())
				}
				return true
			}
			heartbeat := heartbeatOnly(a, b, rb)
			if !ours || rb.Time.IsZero() {
				return !heartbeat
			}
			now := r.Clock.Now()
			before, seen := r.reports.Last(key, now)
			r.reports.Age(key, rb.Time.Time, now)
			return !heartbeat || !seen || before > r.Options.ReportStaleAfter
		},
		DeleteFunc: func(e event.DeleteEvent) bool {
			if key, ours := reportKey(e.Object); ours {
				r.reports.ForgetPod(key)
			}
			return true
		},
	}
}

// noteUnreported notes a worker pod of ours that carries no report yet.
func (r *MLAServiceReconciler) noteUnreported(obj client.Object) {
	key, ours := reportKey(obj)
	if !ours {
		return
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if rep, err := workerreport.Parse(pod); err == nil && rep == nil {
		r.reports.Unreported(key, r.Clock.Now())
	}
}

// reportKey names a worker pod in r.reports by the service that controls
// it, as reconciles of that service do.
func reportKey(obj client.Object) (reportclock.Key, bool) {
	service, ok := controllingService(obj)
	if !ok {
		return reportclock.Key{}, false
	}
	return reportclock.Key{Service: service, Pod: obj.GetUID()}, true
}

// controllingService names the MLAService that controls obj, if one does.
func controllingService(obj client.Object) (types.NamespacedName, bool) {
	ref := metav1.GetControllerOf(obj)
	if ref == nil || ref.Kind != "MLAService" || !strings.HasPrefix(ref.APIVersion, v1alpha1.GroupVersion.Group+"/") {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: obj.GetNamespace(), Name: ref.Name}, true
}

// reportAges ages the service's reports by r.reports as of now.
func (r *MLAServiceReconciler) reportAges(service types.NamespacedName, now time.Time) workerreport.Ages {
	return func(pod *corev1.Pod, rep *v1alpha1.Report) time.Duration {
		return r.reports.Age(reportclock.Key{Service: service, Pod: pod.UID}, rep.Time.Time, now)
	}
}

// heartbeatOnly reports whether b, whose report is rb, differs from a only
// by another time in the worker's report.
func heartbeatOnly(a, b *corev1.Pod, rb *v1alpha1.Report) bool {
	ra, err := workerreport.Parse(a)
	if err != nil || ra == nil || ra.Time.Equal(&rb.Time) {
		return false
	}
	sameTime := *rb
	sameTime.Time = ra.Time
	if *ra != sameTime {
		return false
	}
	// Shallow copies that share all but the annotations: a deep copy of
	// both pods on every heartbeat would only be read.
	strip := func(p *corev1.Pod) corev1.Pod {
		c := *p
		c.ResourceVersion, c.ManagedFields = "", nil
		c.Annotations = maps.Clone(p.Annotations)
		delete(c.Annotations, v1alpha1.AnnotationReport)
		return c
	}
	return equality.Semantic.DeepEqual(strip(a), strip(b))
}

// nodeChanged passes node events that matter to placement: not heartbeats.
func nodeChanged() predicate.Predicate {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		a, ok1 := e.ObjectOld.(*corev1.Node)
		b, ok2 := e.ObjectNew.(*corev1.Node)
		if !ok1 || !ok2 {
			return true
		}
		ready := func(n *corev1.Node) corev1.ConditionStatus {
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady {
					return c.Status
				}
			}
			return corev1.ConditionUnknown
		}
		return ready(a) != ready(b) || a.Spec.Unschedulable != b.Spec.Unschedulable ||
			!equality.Semantic.DeepEqual(a.Spec.Taints, b.Spec.Taints) ||
			!equality.Semantic.DeepEqual(a.Labels, b.Labels) ||
			!equality.Semantic.DeepEqual(a.Status.Allocatable, b.Status.Allocatable)
	}}
}

// Reconcile brings one service's workers to its spec and writes its status.
func (r *MLAServiceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	start := r.Clock.Now()
	defer func() { reconcileSeconds.Observe(r.Clock.Since(start).Seconds()) }()
	logger := log.FromContext(ctx)

	var svc v1alpha1.MLAService
	if err := r.Client.Get(ctx, req.NamespacedName, &svc); err != nil {
		if apierrors.IsNotFound(err) {
			r.forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if svc.DeletionTimestamp != nil {
		return ctrl.Result{}, nil // owner references let the garbage collector take the workers
	}
	o := r.Options
	// Read before listing pods: a report the watch noted after this
	// instant is newer than the listed copy (see reportclock).
	now := r.Clock.Now()

	// Nodes and pods are only read here (podmanager copies before it
	// changes anything), so the cache may hand out its own objects instead
	// of deep copies of the whole cluster on every reconcile.
	var nodeList corev1.NodeList
	if err := r.Client.List(ctx, &nodeList, client.UnsafeDisableDeepCopy); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing nodes: %w", err)
	}
	var podList corev1.PodList
	if err := r.Client.List(ctx, &podList, client.UnsafeDisableDeepCopy); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing pods: %w", err)
	}
	pods := r.Pods.Observe(podList.Items, now)
	nodes := make(map[string]*corev1.Node, len(nodeList.Items))
	for i := range nodeList.Items {
		nodes[nodeList.Items[i].Name] = &nodeList.Items[i]
	}

	cfg, specErr := capacity.FromSpec(&svc.Spec)
	survey := placement.Result{}
	if specErr == nil {
		survey = placement.Place(placement.Request{Service: &svc, Config: cfg, Nodes: nodeList.Items, Pods: pods})
	}
	feasibility := statusmanager.JudgeFeasibility(&svc.Spec, specErr, survey)
	revision := workerpod.Revision(&svc.Spec)
	desired := ptrOr(svc.Spec.Replicas, 1)

	own := ownedBy(&svc, pods)
	r.reports.Retain(req.NamespacedName, uids(own))
	ages := r.reportAges(req.NamespacedName, now)
	agg := statusmanager.AggregateWorkers(own, revision, svc.Spec.ContextLength, ages, o.ReportStaleAfter)

	// Autoscaling owns spec.replicas while it is set.
	if a := svc.Spec.Autoscaling; a != nil && !feasibility.Blocked {
		next, err := r.autoscale(ctx, &svc, agg, now)
		if err != nil {
			return ctrl.Result{}, err
		}
		desired = next
	}

	if svc.Spec.Worker.ServiceAccountName == "" && !feasibility.Blocked {
		if err := workeraccount.Ensure(ctx, r.Client, r.APIReader, &svc); err != nil {
			return ctrl.Result{}, err
		}
	}

	plan := workerplan.Decide(workerplan.Input{Service: &svc, Revision: revision, Pods: own, Nodes: nodes,
		Desired: desired, Frozen: feasibility.Blocked, Now: now, NodeLostGrace: o.NodeLostGrace, UnschedulableGrace: o.UnschedulableGrace, StaleAfter: o.ReportStaleAfter, ReportAges: ages})

	var drainGrace *time.Duration
	if svc.Spec.Autoscaling != nil {
		d := autoscale.DrainGrace(svc.Spec.Autoscaling)
		drainGrace = &d
	}
	for _, d := range plan.Deletions {
		opts := podmanager.DeleteOptions{}
		switch {
		case d.Force:
			opts.GracePeriod = new(time.Duration)
		case d.Drain:
			opts.GracePeriod, opts.DrainReason = drainGrace, d.Message
		}
		if err := r.Pods.Delete(ctx, d.Pod, opts, now); err != nil {
			return ctrl.Result{}, err
		}
		eventType := corev1.EventTypeNormal
		if d.Reason == workerplan.ReasonFailed || d.Reason == workerplan.ReasonNodeGone || d.Reason == workerplan.ReasonNodeNotReady ||
			d.Reason == workerplan.ReasonUnschedulable {
			eventType = corev1.EventTypeWarning
		}
		r.Recorder.Eventf(&svc, d.Pod, eventType, d.Reason, "DeleteWorker", "%s", d.Message)
		logger.Info("deleting worker", "pod", d.Pod.Name, "reason", d.Reason)
	}

	unplaced := 0
	var rejections string
	if len(plan.Create) > 0 {
		res := placement.Place(placement.Request{Service: &svc, Config: cfg, Nodes: nodeList.Items, Pods: pods, Count: len(plan.Create)})
		strategy := string(cmp.Or(svc.Spec.Placement.Strategy, v1alpha1.MostCapacity))
		for i, a := range res.Assignments {
			pod := workerpod.Build(workerpod.Params{Service: &svc, Config: cfg, Revision: revision, Name: plan.Create[i],
				Node: a.Node, GPUProduct: a.GPU.Product, Estimate: a.Estimate})
			if err := r.Pods.Create(ctx, pod, now); err != nil {
				return ctrl.Result{}, err
			}
			placementDecisions.WithLabelValues(strategy, a.GPU.Product, "placed").Inc()
			r.Recorder.Eventf(&svc, pod, corev1.EventTypeNormal, "Placed", "CreateWorker",
				"worker %s on node %s (%s, %d KV tokens predicted, %s)", pod.Name, a.Node, a.GPU.Product, a.Estimate.Tokens, strategy)
			logger.Info("placed worker", "pod", pod.Name, "node", a.Node, "gpu", a.GPU.Product, "tokens", a.Estimate.Tokens)
		}
		if res.Unplaced > 0 {
			unplaced, rejections = res.Unplaced, statusmanager.SummarizeRejections(res.Rejected)
			placementDecisions.WithLabelValues(strategy, "", "unplaced").Add(float64(res.Unplaced))
			r.Recorder.Eventf(&svc, nil, corev1.EventTypeWarning, "FailedPlacement", "CreateWorker",
				"%d workers cannot be placed: %s", res.Unplaced, rejections)
		}
	}

	r.setWaiting(req.NamespacedName, unplaced > 0 || feasibility.Blocked)

	// The status describes the cluster as it is about to be.
	own = ownedBy(&svc, r.Pods.Observe(podList.Items, now))
	agg = statusmanager.AggregateWorkers(own, revision, svc.Spec.ContextLength, ages, o.ReportStaleAfter)
	status := svc.Status.DeepCopy()
	status.ObservedGeneration = svc.Generation
	status.Replicas, status.ReadyReplicas, status.UpdatedReplicas = agg.Replicas, agg.ReadyReplicas, agg.UpdatedReplicas
	status.Selector = labels.SelectorFromSet(map[string]string{v1alpha1.LabelService: svc.Name, v1alpha1.LabelComponent: v1alpha1.ComponentWorker}).String()
	status.KVCache, status.MaxContextLength, status.Workers = agg.KVCache, agg.MaxContextLength, agg.Workers
	status.GPUProducts = survey.Products
	before := meta.FindStatusCondition(svc.Status.Conditions, v1alpha1.ConditionContextLimitFeasible)
	status.Conditions = statusmanager.Conditions(svc.Status.Conditions, statusmanager.Observation{
		Generation: svc.Generation, Desired: desired, Aggregate: agg, Feasibility: feasibility,
		Unplaced: unplaced, Rejections: rejections, Failed: plan.Failed, Rolling: plan.Rolling, ScalingDown: plan.ScalingDown})
	if feasibility.Blocked && (before == nil || before.Reason != feasibility.Reason || before.Message != feasibility.Message) {
		r.Recorder.Eventf(&svc, nil, corev1.EventTypeWarning, feasibility.Reason, "Place", "%s", feasibility.Message)
	}
	if err := r.Status.Write(ctx, &svc, status); err != nil {
		return ctrl.Result{}, err
	}
	recordServiceMetrics(&svc, agg, desired, feasibility.Blocked)

	return ctrl.Result{RequeueAfter: r.requeueAfter(&svc, agg, plan, unplaced, feasibility.Blocked)}, nil
}

// autoscale computes and, when it changes, writes spec.replicas.
func (r *MLAServiceReconciler) autoscale(ctx context.Context, svc *v1alpha1.MLAService, agg statusmanager.Aggregate, now time.Time) (int32, error) {
	policy := autoscale.PolicyFromSpec(svc.Spec.Autoscaling)
	current := ptrOr(svc.Spec.Replicas, policy.Min)
	next := r.stabilizer(client.ObjectKeyFromObject(svc)).Next(now, current, autoscale.Recommend(current, agg.Load, policy), policy)
	if next == current {
		return current, nil
	}
	patch := client.MergeFromWithOptions(svc.DeepCopy(), client.MergeFromWithOptimisticLock{})
	svc.Spec.Replicas = &next
	if err := r.Client.Patch(ctx, svc, patch); err != nil {
		return 0, fmt.Errorf("autoscaling %s to %d replicas: %w", client.ObjectKeyFromObject(svc), next, err)
	}
	autoscaleEvents.WithLabelValues(direction(current, next)).Inc()
	r.Recorder.Eventf(svc, nil, corev1.EventTypeNormal, "Autoscaled", "Scale",
		"%d -> %d workers: KV utilization %.2f (%d of %d tokens, %d waiting requests) against target %.2f",
		current, next, ratio(agg.Load.UsedTokens, agg.Load.CapacityTokens), agg.Load.UsedTokens, agg.Load.CapacityTokens,
		agg.Load.WaitingRequests, policy.Target)
	return next, nil
}

func (r *MLAServiceReconciler) stabilizer(key types.NamespacedName) *autoscale.Stabilizer {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stabilizers == nil {
		r.stabilizers = map[types.NamespacedName]*autoscale.Stabilizer{}
	}
	s := r.stabilizers[key]
	if s == nil {
		s = &autoscale.Stabilizer{}
		r.stabilizers[key] = s
	}
	return s
}

func (r *MLAServiceReconciler) setWaiting(key types.NamespacedName, waiting bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !waiting {
		delete(r.waiting, key)
		return
	}
	if r.waiting == nil {
		r.waiting = map[types.NamespacedName]bool{}
	}
	r.waiting[key] = true
}

func (r *MLAServiceReconciler) forget(key types.NamespacedName) {
	r.mu.Lock()
	delete(r.stabilizers, key)
	delete(r.waiting, key)
	r.mu.Unlock()
	r.reports.Forget(key)
	r.Status.Forget(key)
	forgetServiceMetrics(key)
}

// requeueAfter is when to look again without a watch event: when a counted
// report goes stale, when a NotReady node's grace ends, to retry placement
// or a blocked service, and regularly while autoscaling.
func (r *MLAServiceReconciler) requeueAfter(svc *v1alpha1.MLAService, agg statusmanager.Aggregate, plan workerplan.Plan, unplaced int, blocked bool) time.Duration {
	var after time.Duration
	take := func(d time.Duration) {
		if d > 0 && (after == 0 || d < after) {
			after = d
		}
	}
	take(agg.NextStale)
	take(plan.RecheckAfter)
	if unplaced > 0 || blocked {
		// A blocked service is also woken by node changes (servicesForNode),
		// but a node that joined between this reconcile's node list and its
		// setWaiting would be missed; looking again bounds that.
		take(r.Options.UnplacedRetry)
	}
	if a := svc.Spec.Autoscaling; a != nil {
		p := autoscale.PolicyFromSpec(a)
		take(min(max(min(p.UpWindow, p.DownWindow)/4, minAutoscalePeriod), maxAutoscalePeriod))
	}
	return after
}

func uids(pods []corev1.Pod) []types.UID {
	out := make([]types.UID, len(pods))
	for i := range pods {
		out[i] = pods[i].UID
	}
	return out
}

// ownedBy returns the pods svc controls.
func ownedBy(svc *v1alpha1.MLAService, pods []corev1.Pod) []corev1.Pod {
	var out []corev1.Pod
	for i := range pods {
		p := &pods[i]
		if p.Namespace != svc.Namespace || p.Labels[v1alpha1.LabelService] != svc.Name {
			continue
		}
		if ref := metav1.GetControllerOf(p); ref == nil || ref.UID != svc.UID {
			continue // a look-alike pod, or one of a deleted service of the same name
		}
		out = append(out, *p)
	}
	return out
}

func ptrOr(p *int32, def int32) int32 {
	if p == nil {
		return def
	}
	return *p
}

func ratio(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func direction(from, to int32) string {
	if to > from {
		return "up"
	}
	return "down"
}
