// Package podmanager creates and deletes worker pods and remembers what it
// did until the informer cache shows it, the way the ReplicaSet controller's
// expectations do: a reconcile that runs before the cache catches up sees
// the pods it just created (so their GPUs are not promised twice) and not
// the pods it just deleted.
package podmanager

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// ExpectationTTL bounds how long an action is remembered without the cache
// showing it; after that the cache is trusted again.
const ExpectationTTL = time.Minute

// Manager creates and deletes pods. It is safe for concurrent use.
type Manager struct {
	Client client.Client

	mu      sync.Mutex
	created map[types.NamespacedName]createdPod
	deleted map[types.UID]time.Time
}

type createdPod struct {
	pod *corev1.Pod
	at  time.Time
}

// Observe returns the listed pods as they are about to be: pods this
// manager created that the cache does not show yet are added; pods it
// deleted that the cache still shows as live are marked as terminating. It
// forgets what the cache now shows and what is older than ExpectationTTL.
func (m *Manager) Observe(listed []corev1.Pod, now time.Time) []corev1.Pod {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]corev1.Pod, 0, len(listed)+len(m.created))
	seen := make(map[types.NamespacedName]bool, len(m.created))
	present := make(map[types.UID]bool, len(m.deleted))
	for i := range listed {
		p := listed[i]
		key := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
		if _, ok := m.created[key]; ok {
			seen[key] = true
		}
		if at, ok := m.deleted[p.UID]; ok {
			present[p.UID] = true
			if p.DeletionTimestamp == nil && now.Sub(at) < ExpectationTTL {
				p = *p.DeepCopy()
				ts := metav1.NewTime(at)
				p.DeletionTimestamp = &ts
			} else {
				delete(m.deleted, p.UID)
			}
		}
		out = append(out, p)
	}
	for key, c := range m.created {
		if seen[key] || now.Sub(c.at) >= ExpectationTTL {
			delete(m.created, key)
			continue
		}
		out = append(out, *c.pod.DeepCopy())
	}
	for uid := range m.deleted {
		if !present[uid] {
			delete(m.deleted, uid)
		}
	}
	return out
}

// Create creates pod. A pod of the same name already existing is success:
// names are deterministic, so it is this very worker, created by an earlier
// reconcile or leader.
func (m *Manager) Create(ctx context.Context, pod *corev1.Pod, now time.Time) error {
	if err := m.Client.Create(ctx, pod); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return fmt.Errorf("creating worker pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.created == nil {
		m.created = map[types.NamespacedName]createdPod{}
	}
	m.created[types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}] = createdPod{pod.DeepCopy(), now}
	return nil
}

// DeleteOptions say how to delete a worker.
type DeleteOptions struct {
	// GracePeriod overrides the pod's termination grace when set.
	GracePeriod *time.Duration
	// DrainReason, when set, is written to AnnotationDrainReason before the
	// deletion, so the worker and people see why it stops.
	DrainReason string
}

// Delete deletes pod (only that incarnation of it: a UID precondition
// keeps a stale view from deleting a newer pod of the same name). A pod
// already gone is success.
func (m *Manager) Delete(ctx context.Context, pod *corev1.Pod, opts DeleteOptions, now time.Time) error {
	if opts.DrainReason != "" && pod.Annotations[v1alpha1.AnnotationDrainReason] != opts.DrainReason {
		patch := client.MergeFrom(pod.DeepCopy())
		annotated := pod.DeepCopy()
		if annotated.Annotations == nil {
			annotated.Annotations = map[string]string{}
		}
		annotated.Annotations[v1alpha1.AnnotationDrainReason] = opts.DrainReason
		if err := m.Client.Patch(ctx, annotated, patch); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("annotating worker pod %s/%s for draining: %w", pod.Namespace, pod.Name, err)
		}
	}
	delOpts := []client.DeleteOption{client.Preconditions{UID: &pod.UID}}
	if opts.GracePeriod != nil {
		delOpts = append(delOpts, client.GracePeriodSeconds(int64(opts.GracePeriod.Seconds())))
	}
	if err := m.Client.Delete(ctx, pod, delOpts...); err != nil {
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil // gone, or replaced by a newer pod of that name
		}
		return fmt.Errorf("deleting worker pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.deleted == nil {
		m.deleted = map[types.UID]time.Time{}
	}
	if pod.UID != "" {
		m.deleted[pod.UID] = now
	}
	return nil
}
