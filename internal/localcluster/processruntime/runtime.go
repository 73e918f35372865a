// Package processruntime stands in for the kubelet for worker pods on the
// local cluster's kwok nodes. There is no container runtime here: for each
// worker pod bound to a simulated node it runs the worker binary as a local
// process, with the pod's env and args and the node's simulated GPU, binds
// it to a loopback pod IP from the node's pod CIDR, mirrors the process in
// the pod's status (phase, container state, restarts, readiness from the
// readiness probe), restarts it per restartPolicy with CrashLoopBackOff, and
// on deletion stops it within the grace period and removes the pod.
//
// Pods that are not workers are left to kwok's pod stages.
package processruntime

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// Options configure a Runtime.
type Options struct {
	Client kubernetes.Interface
	// WorkerBinary is run for every worker container.
	WorkerBinary string
	// Kubeconfig is handed to workers (KUBECONFIG) so they can report on
	// their own pod.
	Kubeconfig string
	// LogDir receives one log file per worker pod.
	LogDir string
	// NodeSelector picks the nodes this runtime is the kubelet of.
	NodeSelector labels.Selector
	// Backoff of crashed workers; zero uses DefaultBackoff.
	Backoff Backoff
	// ShutdownGrace bounds how long a worker may take to stop when the
	// runtime itself stops (Ctrl-C), whatever its pod's grace period.
	ShutdownGrace time.Duration
	// Logf reports lifecycle events; nil is silent.
	Logf func(format string, args ...any)
}

// Runtime runs worker pods as processes.
type Runtime struct {
	opts   Options
	ipam   *ipam
	nodes  corelisters.NodeLister
	probes *http.Client

	mu       sync.Mutex
	workers  map[types.UID]*podWorker
	finished map[types.UID]bool
	wg       sync.WaitGroup
	ctx      context.Context
}

// New makes a Runtime.
func New(opts Options) *Runtime {
	if opts.Backoff == (Backoff{}) {
		opts.Backoff = DefaultBackoff
	}
	if opts.ShutdownGrace == 0 {
		opts.ShutdownGrace = 5 * time.Second
	}
	if opts.NodeSelector == nil {
		opts.NodeSelector = labels.Everything()
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	return &Runtime{
		opts:     opts,
		ipam:     newIPAM(),
		probes:   &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}},
		workers:  map[types.UID]*podWorker{},
		finished: map[types.UID]bool{},
	}
}

// WorkerSelector selects worker pods.
var WorkerSelector = labels.SelectorFromSet(labels.Set{v1alpha1.LabelComponent: v1alpha1.ComponentWorker})

// Run runs worker pods until ctx ends, then stops every worker process and
// returns once all are gone. It returns an error only if it cannot start.
func (r *Runtime) Run(ctx context.Context) error {
	r.ctx = ctx
	podFactory := informers.NewSharedInformerFactoryWithOptions(r.opts.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = WorkerSelector.String()
		}))
	nodeFactory := informers.NewSharedInformerFactory(r.opts.Client, 0)
	r.nodes = nodeFactory.Core().V1().Nodes().Lister()
	podInformer := podFactory.Core().V1().Pods().Informer()
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { r.onPod(obj) },
		UpdateFunc: func(_, obj any) { r.onPod(obj) },
		DeleteFunc: r.onPodDeleted,
	}); err != nil {
		return fmt.Errorf("watching worker pods: %w", err)
	}
	nodeFactory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), nodeFactory.Core().V1().Nodes().Informer().HasSynced) {
		return fmt.Errorf("node cache did not sync")
	}
	podFactory.Start(ctx.Done())
	<-ctx.Done()
	podFactory.Shutdown()
	nodeFactory.Shutdown()
	r.wg.Wait()
	return nil
}

func (r *Runtime) onPod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.NodeName == "" {
		return
	}
	node, err := r.nodes.Get(pod.Spec.NodeName)
	if err == nil && !r.opts.NodeSelector.Matches(labels.Set(node.Labels)) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.finished[pod.UID] || r.ctx.Err() != nil {
		return
	}
	w := r.workers[pod.UID]
	if w == nil {
		w = newPodWorker(r, pod)
		r.workers[pod.UID] = w
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			w.run(r.ctx)
			r.mu.Lock()
			delete(r.workers, pod.UID)
			r.finished[pod.UID] = true
			r.mu.Unlock()
			r.ipam.Release(string(pod.UID))
		}()
		return
	}
	w.update(pod)
}

func (r *Runtime) onPodDeleted(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if w := r.workers[pod.UID]; w != nil {
		w.deleted()
	}
}

// Running is the number of worker pods the runtime is handling.
func (r *Runtime) Running() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.workers)
}
