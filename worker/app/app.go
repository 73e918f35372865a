// Package app runs a worker: it finds the device, sizes the KV pool with the
// capacity model the operator used, serves the API, reports capacity on its
// pod and drains on termination.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/client/config"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/capacity"
	"github.com/mla-operator/mla-operator/worker/engine"
	"github.com/mla-operator/mla-operator/worker/gpu"
	"github.com/mla-operator/mla-operator/worker/kvcache"
	"github.com/mla-operator/mla-operator/worker/report"
	"github.com/mla-operator/mla-operator/worker/server"
	"github.com/mla-operator/mla-operator/worker/settings"
)

// Deps are the worker's connections to the world; nil fields take the
// production ones. Tests replace them.
type Deps struct {
	// NVML discovers GPUs (nvml.New()).
	NVML nvml.Interface
	// Listener serves the API (a listener on --bind-address:--port).
	Listener net.Listener
	// Patcher writes reports (a client from --kubeconfig, KUBECONFIG or
	// the in-cluster config), used only when the pod is known.
	Patcher report.Patcher
	// HostMemoryBytes sizes a CPU pool when no GPU is simulated.
	HostMemoryBytes func() (int64, error)
	Logger          *slog.Logger
	// Ready is called with the API's address once it serves.
	Ready func(addr net.Addr)
}

// Run serves until ctx ends (SIGTERM), then drains and returns nil; it
// returns an error when the worker cannot serve, after reporting it.
func Run(ctx context.Context, s *settings.Settings, d Deps) error {
	log := d.Logger
	if log == nil {
		log = slog.Default()
	}
	var rep *report.Reporter
	src := &reportSource{}
	if s.Reporting() {
		p := d.Patcher
		if p == nil {
			var err error
			if p, err = kubeClient(); err != nil {
				return fmt.Errorf("capacity reports: %w", err)
			}
		}
		pod := types.NamespacedName{Namespace: s.PodNamespace, Name: s.PodName}
		rep = report.New(p, pod, src, report.Options{Heartbeat: s.Heartbeat, MinInterval: s.ReportMinInterval, Logger: log})
		log.Info("capacity reports on", "pod", pod.String())
	} else {
		log.Info("capacity reports off: pod name or namespace not set", "env", []string{v1alpha1.EnvPodName, v1alpha1.EnvPodNamespace})
	}
	// fail logs why the worker cannot serve and reports it on the pod.
	fail := func(err error, r v1alpha1.Report) error {
		log.Error("worker cannot serve", "err", err)
		if rep != nil {
			r.Error = err.Error()
			if werr := rep.Write(context.WithoutCancel(ctx), r); werr != nil {
				log.Error("reporting the failure", "err", werr)
			}
		}
		return err
	}

	cfg, err := s.Capacity()
	if err != nil {
		return fail(err, v1alpha1.Report{})
	}
	dev, err := chooseDevice(s, d, log)
	if err != nil {
		return fail(err, v1alpha1.Report{})
	}
	failed := v1alpha1.Report{Device: dev.name, GPUProduct: dev.gpu.Product}
	est := cfg.Estimate(dev.gpu)
	failed.CapacityTokens, failed.MaxContextLength = est.Tokens, est.Tokens
	if dev.free > 0 && dev.free < est.RequestedBytes {
		return fail(fmt.Errorf("%s: free GPU memory %.2f GiB is less than the %.2f GiB requested (gpuMemoryUtilization %g of %.2f GiB); "+
			"another process holds %.2f GiB. Lower gpuMemoryUtilization or free the GPU",
			dev.gpu.Product, gib(dev.free), gib(est.RequestedBytes), cfg.GPUMemoryUtilization, gib(dev.gpu.MemoryBytes), gib(dev.gpu.InUseBytes)), failed)
	}
	contextLength := s.ContextLength
	if contextLength == 0 {
		contextLength = max(est.Tokens, 1)
	}
	if err := cfg.CheckContext(est, contextLength); err != nil {
		return fail(err, failed)
	}

	var eng engine.Engine
	if dev.name == settings.DeviceCPU && s.CPUThreads > 0 {
		eng = engine.NewCPU(s.CPUThreads)
	} else if eng, err = engine.New(dev.name, 0); err != nil {
		return fail(fmt.Errorf("starting the %s engine: %w", dev.name, err), failed)
	}
	defer eng.Close()
	cache, err := eng.NewCache(engine.CacheShape{Layers: cfg.Model.Layers, Pages: int(est.Pages)})
	if err != nil {
		return fail(fmt.Errorf("allocating the KV pool of %.2f GiB: %w", gib(est.PoolBytes), err), failed)
	}
	defer cache.Close()
	pool, err := kvcache.New(cache, contextLength)
	if err != nil {
		return fail(err, failed)
	}
	srv, err := server.New(server.Config{
		Pool: pool, Engine: eng, ModelName: s.ModelName, Heads: cfg.Model.AttentionHeads,
		SoftmaxScale: s.Scale(), KVDType: string(cfg.DType), Device: dev.name, GPUProduct: dev.gpu.Product, Logger: log,
	})
	if err != nil {
		return fail(err, failed)
	}
	src.set(srv, dev.name, dev.gpu.Product)
	log.Info("KV pool sized", "device", dev.name, "gpu", dev.gpu.Product, "gpuMemoryGiB", gib(dev.gpu.MemoryBytes),
		"requestedGiB", gib(est.RequestedBytes), "weightsPerGPUGiB", gib(est.WeightsPerGPUBytes),
		"availableGiB", gib(est.AvailableBytes), "pages", est.Pages, "capacityTokens", est.Tokens,
		"poolGiB", gib(est.PoolBytes), "contextLength", contextLength, "softmaxScale", s.Scale())

	ln := d.Listener
	if ln == nil {
		addr := net.JoinHostPort(s.BindAddress, strconv.Itoa(s.Port))
		if ln, err = net.Listen("tcp", addr); err != nil {
			return fail(fmt.Errorf("listening on %s: %w", addr, err), failed)
		}
	}
	httpSrv := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- httpSrv.Serve(ln) }()
	log.Info("serving", "addr", ln.Addr().String())
	if d.Ready != nil {
		d.Ready(ln.Addr())
	}

	// The reporter outlives ctx: it reports the drain.
	repCtx, stopReports := context.WithCancel(context.WithoutCancel(ctx))
	var reports sync.WaitGroup
	if rep != nil {
		reports.Add(1)
		go func() { defer reports.Done(); rep.Run(repCtx) }()
	}
	defer func() { stopReports(); reports.Wait() }()

	select {
	case err := <-serveErr:
		return fail(fmt.Errorf("serving: %w", err), failed)
	case <-ctx.Done():
	}

	// Drain: refuse new sequences, say so at once, serve the rest until they
	// are freed or the grace period ends.
	log.Info("termination requested: draining", "activeSequences", pool.Stats().Active, "timeout", s.DrainTimeout)
	srv.Drain()
	if rep != nil {
		if err := rep.Write(repCtx, src.Report()); err != nil {
			log.Error("reporting the drain", "err", err)
		}
	}
	deadline := time.NewTimer(s.DrainTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
drain:
	for pool.Stats().Active > 0 {
		select {
		case <-deadline.C:
			log.Warn("drain timeout: exiting with sequences still active", "activeSequences", pool.Stats().Active)
			break drain
		case <-tick.C:
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := httpSrv.Shutdown(shutdownCtx); err != nil {
		log.Warn("closing connections", "err", err)
	}
	stopReports()
	reports.Wait()
	if rep != nil {
		if err := rep.Write(context.WithoutCancel(ctx), src.Report()); err != nil {
			log.Error("final report", "err", err)
		}
	}
	log.Info("drained; exiting")
	return nil
}

func kubeClient() (client.Client, error) {
	cfg, err := ctrlconfig.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig: %w", err)
	}
	c, err := client.New(cfg, client.Options{Scheme: clientgoscheme.Scheme})
	if err != nil {
		return nil, fmt.Errorf("kube client: %w", err)
	}
	return c, nil
}

func gib(b int64) float64 { return float64(b) / capacity.GiB }

// device is the chosen backend and the GPU the pool is sized for.
type device struct {
	name string
	gpu  capacity.GPU
	// free is the GPU's free memory (0 in CPU mode).
	free int64
}

func chooseDevice(s *settings.Settings, d Deps, log *slog.Logger) (device, error) {
	lib := d.NVML
	if lib == nil {
		lib = nvml.New()
	}
	cudaBuilt := false
	for _, b := range engine.Backends() {
		cudaBuilt = cudaBuilt || b == settings.DeviceCUDA
	}
	if s.Device == settings.DeviceCUDA || (s.Device == settings.DeviceAuto && cudaBuilt) {
		inv, err := gpu.Discover(lib)
		switch {
		case err == nil && !cudaBuilt:
			return device{}, fmt.Errorf("--device cuda: this binary was built without the CUDA backend (build with -tags cuda)")
		case err == nil:
			g := inv.Devices[0]
			log.Info("GPU found", "index", g.Index, "name", g.Name, "uuid", g.UUID, "totalGiB", gib(int64(g.TotalBytes)),
				"freeGiB", gib(int64(g.FreeBytes)), "computeCapability", fmt.Sprintf("%d.%d", g.ComputeMajor, g.ComputeMinor),
				"driver", inv.DriverVersion, "gpus", len(inv.Devices))
			return device{name: settings.DeviceCUDA, free: int64(g.FreeBytes),
				gpu: capacity.GPU{Product: g.Product(), MemoryBytes: int64(g.TotalBytes), InUseBytes: g.InUseBytes()}}, nil
		case s.Device == settings.DeviceCUDA:
			return device{}, fmt.Errorf("--device cuda: %w", err)
		default:
			log.Info("no usable GPU: running the CPU engine", "reason", err.Error())
		}
	} else if s.Device == settings.DeviceAuto {
		log.Info("CUDA backend not built in: running the CPU engine")
	}

	if s.SimulatedGPU != "" {
		sim, err := gpu.ParseSimulated(s.SimulatedGPU)
		if err != nil {
			return device{}, err
		}
		return device{name: settings.DeviceCPU, gpu: capacity.GPU{Product: sim.Product, MemoryBytes: sim.MemoryBytes}}, nil
	}
	host := d.HostMemoryBytes
	if host == nil {
		host = hostMemory
	}
	mem, err := host()
	if err != nil {
		return device{}, fmt.Errorf("reading host memory to size the CPU pool: %w", err)
	}
	return device{name: settings.DeviceCPU, gpu: capacity.GPU{Product: "cpu", MemoryBytes: mem}}, nil
}

func hostMemory() (int64, error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0, err
	}
	return int64(si.Totalram) * int64(si.Unit), nil
}

// reportSource turns the server's view into reports. WaitingRequests is
// the creations waiting now plus those refused since the previous report.
type reportSource struct {
	mu                    sync.Mutex
	srv                   *server.Server
	device, product       string
	refusedAtLastReport   int64
	refusedInLastSnapshot int64
}

func (r *reportSource) set(srv *server.Server, device, product string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.srv, r.device, r.product = srv, device, product
}

func (r *reportSource) Report() v1alpha1.Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv == nil {
		return v1alpha1.Report{}
	}
	c := r.srv.Capacity()
	r.refusedInLastSnapshot = c.RefusedTotal
	return v1alpha1.Report{
		CapacityTokens: c.CapacityTokens, UsedTokens: c.UsedTokens, ActiveSequences: int32(c.ActiveSequences),
		WaitingRequests:  int32(c.WaitingRequests + c.RefusedTotal - r.refusedAtLastReport),
		MaxContextLength: c.MaxContextLength, GPUProduct: r.product, Device: r.device,
		Ready: c.Ready, Draining: c.Draining,
	}
}

// Committed starts the next "refused since" window at the refusals the
// written report counted.
func (r *reportSource) Committed(v1alpha1.Report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refusedAtLastReport = r.refusedInLastSnapshot
}

var _ report.Committer = (*reportSource)(nil)
