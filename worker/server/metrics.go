package server

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mla-operator/mla-operator/worker/kvcache"
)

// Metric names that routers and autoscalers already read from vLLM
// (llm-d's endpoint picker, KEDA, AIBrix), so they work unchanged. As in
// vLLM, kv_cache_usage_perc is a fraction in [0, 1], and the per-model
// gauges carry a model_name label.
const (
	metricKVUsage     = "vllm:kv_cache_usage_perc"
	metricRunning     = "vllm:num_requests_running"
	metricWaiting     = "vllm:num_requests_waiting"
	metricCacheConfig = "vllm:cache_config_info"
	metricCapacity    = "mla_kv_capacity_tokens"
	metricUsed        = "mla_kv_used_tokens"
	metricTaken       = "mla_kv_taken_tokens"
	metricRefused     = "mla_sequences_refused_total"
	metricDraining    = "mla_worker_draining"
)

// poolCollector reads the pool's accounting once per scrape, so every
// gauge of a scrape comes from the same instant and nothing is kept in step
// by hand.
type poolCollector struct {
	pool *kvcache.Pool
	// draining reports whether the worker stopped admitting.
	draining func() bool

	usage, running, waiting, config, capacity, used, taken, refused, drain *prometheus.Desc
	modelName, configLabels                                                []string
}

func newPoolCollector(pool *kvcache.Pool, modelName, dtype string, draining func() bool) *poolCollector {
	model := []string{"model_name"}
	s := pool.Stats()
	return &poolCollector{
		pool: pool, draining: draining, modelName: []string{modelName},
		usage:   prometheus.NewDesc(metricKVUsage, "KV-cache usage: reserved pages over all pages, 1 means full.", model, nil),
		running: prometheus.NewDesc(metricRunning, "Sequences admitted and not freed.", model, nil),
		waiting: prometheus.NewDesc(metricWaiting, "Sequence creations waiting for KV-cache room.", model, nil),
		config: prometheus.NewDesc(metricCacheConfig, "KV-cache configuration; the value is always 1.",
			[]string{"block_size", "num_gpu_blocks", "cache_dtype"}, nil),
		capacity:     prometheus.NewDesc(metricCapacity, "Tokens the KV pool holds.", nil, nil),
		used:         prometheus.NewDesc(metricUsed, "Tokens reserved by admitted sequences (whole pages).", nil, nil),
		taken:        prometheus.NewDesc(metricTaken, "Tokens of pages that hold data (whole pages).", nil, nil),
		refused:      prometheus.NewDesc(metricRefused, "Sequence creations refused for lack of KV-cache room.", nil, nil),
		drain:        prometheus.NewDesc(metricDraining, "1 once the worker stopped admitting sequences.", nil, nil),
		configLabels: []string{strconv.Itoa(64), strconv.Itoa(s.Pages), dtype},
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.usage, c.running, c.waiting, c.config, c.capacity, c.used, c.taken, c.refused, c.drain} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stats()
	usage := 0.0
	if s.Pages > 0 {
		usage = float64(s.ReservedPages) / float64(s.Pages)
	}
	draining := 0.0
	if c.draining() {
		draining = 1
	}
	ch <- prometheus.MustNewConstMetric(c.usage, prometheus.GaugeValue, usage, c.modelName...)
	ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, float64(s.Active), c.modelName...)
	ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(s.Waiting), c.modelName...)
	ch <- prometheus.MustNewConstMetric(c.config, prometheus.GaugeValue, 1, c.configLabels...)
	ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(s.CapacityTokens))
	ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(s.UsedTokens))
	ch <- prometheus.MustNewConstMetric(c.taken, prometheus.GaugeValue, float64(s.TakenPages)*64)
	ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(s.Refused))
	ch <- prometheus.MustNewConstMetric(c.drain, prometheus.GaugeValue, draining)
}

// metrics are the server's own instruments.
type metrics struct {
	registry *prometheus.Registry
	requests *prometheus.HistogramVec // by route and status code
	decode   *prometheus.HistogramVec // engine time per step, by device
	batch    prometheus.Histogram
}

func newMetrics(reg *prometheus.Registry, pool prometheus.Collector) *metrics {
	m := &metrics{
		registry: reg,
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mla_http_request_duration_seconds",
			Help:    "Serving API request latency, from the request's arrival to the last byte written.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2.5, 14),
		}, []string{"route", "code"}),
		decode: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mla_decode_step_duration_seconds",
			Help:    "Engine time of one batched decode step of one layer.",
			Buckets: prometheus.ExponentialBuckets(20e-6, 2.5, 14),
		}, []string{"device"}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mla_decode_batch_size",
			Help:    "Sequences per decode step.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 13),
		}),
	}
	reg.MustRegister(pool, m.requests, m.decode, m.batch,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
