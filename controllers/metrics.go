package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/statusmanager"
)

var (
	placementDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mla_operator_placement_decisions_total",
		Help: "Workers placed on a node (result=placed) or left without one (result=unplaced), by strategy and GPU product.",
	}, []string{"strategy", "gpu_product", "result"})
	autoscaleEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mla_operator_autoscale_events_total",
		Help: "Changes of spec.replicas made by the autoscaler, by direction.",
	}, []string{"direction"})
	nodeChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mla_operator_node_changes_total",
		Help: "Node changes that matter to placement (readiness, schedulability, taints, labels, allocatable), each waking the services with a worker on the node and those waiting for room.",
	})
	reconcileSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "mla_operator_reconcile_duration_seconds",
		Help:    "Time to reconcile one MLAService, status write included.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	})
	serviceLabels     = []string{"namespace", "service"}
	serviceInfeasible = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mla_operator_service_infeasible",
		Help: "1 while a service cannot be served (context too long for every eligible GPU, unsupported KV dtype, no GPU nodes, invalid spec).",
	}, serviceLabels)
	serviceCapacity = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mla_operator_service_kv_capacity_tokens",
		Help: "KV-cache tokens the counted workers of a service report.",
	}, serviceLabels)
	serviceUsed = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mla_operator_service_kv_used_tokens",
		Help: "KV-cache tokens the counted workers of a service hold.",
	}, serviceLabels)
	serviceUtilization = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mla_operator_service_kv_utilization",
		Help: "Used over capacity KV-cache tokens of a service's counted workers.",
	}, serviceLabels)
	serviceReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mla_operator_service_ready_workers",
		Help: "Workers that are Ready with a fresh report.",
	}, serviceLabels)
	serviceDesired = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mla_operator_service_desired_workers",
		Help: "Workers a service asks for (spec.replicas, or the autoscaler's choice).",
	}, serviceLabels)
)

func init() {
	metrics.Registry.MustRegister(placementDecisions, autoscaleEvents, reconcileSeconds, nodeChanges,
		serviceInfeasible, serviceCapacity, serviceUsed, serviceUtilization, serviceReady, serviceDesired)
}

func recordServiceMetrics(svc *v1alpha1.MLAService, agg statusmanager.Aggregate, desired int32, infeasible bool) {
	l := prometheus.Labels{"namespace": svc.Namespace, "service": svc.Name}
	v := 0.0
	if infeasible {
		v = 1
	}
	serviceInfeasible.With(l).Set(v)
	serviceCapacity.With(l).Set(float64(agg.KVCache.CapacityTokens))
	serviceUsed.With(l).Set(float64(agg.KVCache.UsedTokens))
	serviceUtilization.With(l).Set(agg.KVCache.Utilization)
	serviceReady.With(l).Set(float64(agg.ReadyReplicas))
	serviceDesired.With(l).Set(float64(desired))
}

func forgetServiceMetrics(key types.NamespacedName) {
	l := prometheus.Labels{"namespace": key.Namespace, "service": key.Name}
	for _, g := range []*prometheus.GaugeVec{serviceInfeasible, serviceCapacity, serviceUsed, serviceUtilization, serviceReady, serviceDesired} {
		g.Delete(l)
	}
}
