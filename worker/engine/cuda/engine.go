//go:build cuda

// Package cuda is the GPU backend of the MLA decode engine: the latent KV
// cache lives in device memory and decode runs the fused Hopper kernels of
// kernels/mla_decode.cu, loaded from the embedded sm_90a module through
// gorgonia.org/cu. It registers itself as "cuda"; importing it needs a GPU
// (gorgonia.org/cu initializes the driver at package init and exits the
// process when that fails), hence the cuda build tag.
package cuda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"sync"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/mla-operator/mla-operator/kernels"
	"github.com/mla-operator/mla-operator/worker/engine"
)

// Name is the backend's registry name.
const Name = "cuda"

// Environment overrides, for kernel development and fallbacks in the field.
const (
	// EnvModule names a cubin to load instead of the embedded one.
	EnvModule = "MLA_CUDA_MODULE"
	// EnvKernel selects the decode kernel variant (KernelAuto,
	// KernelSeesaw, KernelWGMMA, KernelMMA).
	EnvKernel = "MLA_CUDA_KERNEL"
)

func init() {
	engine.Register(Name, func(ordinal int) (engine.Engine, error) {
		return New(Options{Ordinal: ordinal})
	})
}

// Options configure an Engine.
type Options struct {
	Ordinal int
	// Kernel is one of the Kernel constants; empty means $MLA_CUDA_KERNEL,
	// else DefaultKernel.
	Kernel string
	// Module is a cubin image; nil means $MLA_CUDA_MODULE's file, else the
	// embedded module.
	Module []byte
}

// Engine decodes on one GPU. Calls are serialized: the kernels fill the GPU
// on their own, so concurrent decodes would only queue.
type Engine struct {
	mu      sync.Mutex
	dev     cu.Device
	ctx     cu.CUContext
	mod     cu.Module
	stream  cu.Stream // the legacy default stream: synchronous copies order with launches
	sms     int
	kernel  string
	fn      functions
	scratch scratch
	// sched says which schedule the workspace in scratch holds; decode and
	// combine only read it, so calls with the same lengths (a step's
	// layers) reuse it.
	sched  scheduleKey
	closed bool
}

type functions struct {
	schedule, combine, scatter, gather cu.Function
	// schedConsts are the schedule kernel's constants, from the module;
	// nil for a module that does not report them, whose schedules are then
	// not predicted (combine always runs).
	schedConsts *scheduleConstants
	// decode holds the decode kernels the engine's variant can choose,
	// by name (decodeFunctionName picks one per call).
	decode map[string]cu.Function
}

// scheduleKey identifies a computed schedule: it depends only on the
// sequence lengths and the number of parts, and lives in the workspace of
// one scratch generation.
type scheduleKey struct {
	valid      bool
	generation uint64
	parts      int
	lens       []int32
	// combine: the combine kernel runs after decode. False where the
	// host's prediction of the schedule (splitSlots) finds every sequence
	// in one part: the launch would find nothing to do, and costs ~5 us a
	// call (H100, docs/kernel-notes.md, v12).
	combine bool
}

func (k *scheduleKey) matches(generation uint64, parts int, lens []int32) bool {
	return k.valid && k.generation == generation && k.parts == parts && slices.Equal(k.lens, lens)
}

func (k *scheduleKey) set(generation uint64, parts int, lens []int32, combine bool) {
	k.valid, k.generation, k.parts, k.combine = true, generation, parts, combine
	k.lens = append(k.lens[:0], lens...)
}

var _ engine.Engine = (*Engine)(nil)

// New opens the GPU, loads the module and prepares the kernels.
func New(opts Options) (*Engine, error) {
	kernel, from := opts.Kernel, "Options.Kernel"
	if kernel == "" {
		kernel, from = os.Getenv(EnvKernel), "$"+EnvKernel
	}
	if kernel == "" {
		kernel = DefaultKernel
	}
	switch kernel {
	case KernelAuto, KernelSeesaw, KernelWGMMA, KernelMMA:
	default:
		return nil, fmt.Errorf("cuda engine: unknown decode kernel %q in %s (want %s, %s, %s or %s)", kernel, from,
			KernelAuto, KernelSeesaw, KernelWGMMA, KernelMMA)
	}
	image := opts.Module
	if image == nil {
		if path := os.Getenv(EnvModule); path != "" {
			b, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("cuda engine: reading %s: %w", EnvModule, err)
			}
			image = b
		} else {
			image = kernels.MLADecode
		}
	}
	if len(image) == 0 {
		return nil, errors.New("cuda engine: empty kernel module")
	}

	dev, err := cu.GetDevice(opts.Ordinal)
	if err != nil {
		return nil, fmt.Errorf("cuda engine: device %d: %w", opts.Ordinal, err)
	}
	e := &Engine{dev: dev, kernel: kernel}
	if e.ctx, err = dev.RetainPrimaryCtx(); err != nil {
		return nil, fmt.Errorf("cuda engine: retaining the primary context of device %d: %w", opts.Ordinal, err)
	}
	if err := e.do(func() error { return e.load(image) }); err != nil {
		_ = dev.ReleasePrimaryCtx()
		return nil, err
	}
	return e, nil
}

func (e *Engine) load(image []byte) error {
	major, err := e.dev.Attribute(cu.ComputeCapabilityMajor)
	if err != nil {
		return fmt.Errorf("cuda engine: compute capability: %w", err)
	}
	minor, err := e.dev.Attribute(cu.ComputeCapabilityMinor)
	if err != nil {
		return fmt.Errorf("cuda engine: compute capability: %w", err)
	}
	if major != 9 || minor != 0 {
		return fmt.Errorf("cuda engine: the kernels are built for sm_90a (Hopper), device is sm_%d%d", major, minor)
	}
	if e.sms, err = e.dev.Attribute(cu.MultiprocessorCount); err != nil {
		return fmt.Errorf("cuda engine: multiprocessor count: %w", err)
	}
	if e.mod, err = cu.LoadData(string(image)); err != nil {
		return fmt.Errorf("cuda engine: loading the kernel module: %w", err)
	}
	names := []struct {
		f    *cu.Function
		name string
	}{
		{&e.fn.schedule, "mla_decode_schedule"},
		{&e.fn.combine, "mla_decode_combine"},
		{&e.fn.scatter, "mla_cache_scatter"},
		{&e.fn.gather, "mla_cache_gather"},
	}
	for _, n := range names {
		if *n.f, err = e.mod.Function(n.name); err != nil {
			return fmt.Errorf("cuda engine: kernel %s: %w", n.name, err)
		}
	}
	isNotFound := func(err error) bool { return errors.Is(err, cu.NotFound) }
	if e.fn.schedConsts, err = e.loadScheduleConstants(isNotFound); err != nil {
		return err
	}
	if e.fn.decode, err = loadDecodeFunctions(e.kernel, e.mod.Function, isNotFound); err != nil {
		return fmt.Errorf("cuda engine: %w", err)
	}
	for _, f := range e.fn.decode {
		if err := setMaxDynamicSharedMemory(f, smemBytes); err != nil {
			return err
		}
	}
	return nil
}

// hasDecode says whether the engine loaded a decode function.
func (e *Engine) hasDecode(name string) bool {
	_, ok := e.fn.decode[name]
	return ok
}

// do runs f with the engine's context current on this OS thread, one call
// at a time.
func (e *Engine) do(f func() error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errors.New("cuda engine: closed")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cu.SetCurrentContext(e.ctx); err != nil {
		return fmt.Errorf("cuda engine: making the context current: %w", err)
	}
	return f()
}

// Name implements engine.Engine.
func (e *Engine) Name() string { return Name }

// Kernel is the decode kernel variant in use.
func (e *Engine) Kernel() string { return e.kernel }

// NewCache allocates a paged latent cache in device memory.
func (e *Engine) NewCache(shape engine.CacheShape) (engine.Cache, error) {
	if shape.Layers < 1 || shape.Pages < 1 {
		return nil, fmt.Errorf("cuda engine: cache shape %+v needs at least one layer and page", shape)
	}
	// The tensor map addresses rows with 32-bit signed coordinates.
	rows := int64(shape.Layers) * int64(shape.Pages) * engine.PageSize
	if rows > math.MaxInt32 {
		return nil, fmt.Errorf("cuda engine: a cache of %d layers x %d pages is %d token rows; the decode kernel's "+
			"tensor map addresses at most %d: use fewer pages", shape.Layers, shape.Pages, rows, math.MaxInt32)
	}
	c := &Cache{e: e, shape: shape}
	err := e.do(func() error {
		p, err := cu.MemAlloc(shape.Bytes())
		if err != nil {
			return fmt.Errorf("cuda engine: allocating a %d-byte cache: %w", shape.Bytes(), err)
		}
		m, err := cu.MemAlloc(kvMapBytes)
		if err != nil {
			return errors.Join(fmt.Errorf("cuda engine: allocating the cache's tensor map: %w", err), cu.MemFree(p))
		}
		if err := makeKVMap(m, p, rows); err != nil {
			return errors.Join(fmt.Errorf("cuda engine: cache tensor map: %w", err), cu.MemFree(m), cu.MemFree(p))
		}
		c.ptr, c.kvMap = p, m
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Decode implements engine.Engine: copies the step's inputs to the device,
// runs schedule (unless the workspace holds the schedule of the same lengths
// and part count already, as for a step's later layers), decode and combine,
// and copies out and lse back.
func (e *Engine) Decode(ctx context.Context, c engine.Cache, req *engine.DecodeRequest) error {
	cache, ok := c.(*Cache)
	if !ok || cache.e != e {
		return errors.New("cuda engine: cache was not made by this engine")
	}
	if err := req.Validate(cache.shape); err != nil {
		return fmt.Errorf("cuda engine: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	rows := req.SQ * req.Heads
	tiles := (rows + tileRows - 1) / tileRows
	parts := max(1, e.sms/tiles)
	return e.do(func() error {
		if cache.ptr == 0 {
			return errors.New("cuda engine: cache is closed")
		}
		s := &e.scratch
		if err := s.ensure(len(req.Q)*2, len(req.BlockTable)*4, len(req.SeqLens)*4, len(req.Out)*2, len(req.LSE)*4,
			schedInts(req.Batch, parts)*4, 2*parts*rows*engine.LatentDim*4, 2*parts*rows*4); err != nil {
			return err
		}
		if err := copyIn(s.q.ptr, unsafe.Pointer(&req.Q[0]), len(req.Q)*2); err != nil {
			return err
		}
		if err := copyIn(s.table.ptr, unsafe.Pointer(&req.BlockTable[0]), len(req.BlockTable)*4); err != nil {
			return err
		}
		if err := copyIn(s.lens.ptr, unsafe.Pointer(&req.SeqLens[0]), len(req.SeqLens)*4); err != nil {
			return err
		}
		p := makeDecodeParams(decodeArgs{
			q: s.q.ptr, cache: cache.layer(req.Layer), kvMap: cache.kvMap, kvRow0: cache.layerRow0(req.Layer),
			table: s.table.ptr, lens: s.lens.ptr,
			out: s.out.ptr, lse: s.lse.ptr, sched: s.sched.ptr,
			partialOut: s.partialOut.ptr, partialLSE: s.partialLSE.ptr,
			batch: req.Batch, sq: req.SQ, heads: req.Heads, maxPages: req.MaxPages, parts: parts,
			scale: req.Scale,
		})
		if !e.sched.matches(s.generation, parts, req.SeqLens) {
			e.sched.valid = false // until the launch succeeds
			if err := launchDecode(e.fn.schedule, 1, 1, 32, 0, e.stream, &p); err != nil {
				return fmt.Errorf("cuda engine: schedule: %w", err)
			}
			e.sched.set(s.generation, parts, req.SeqLens, e.needsCombine(req.SeqLens, parts))
		}
		decode := e.fn.decode[decodeFunctionName(e.kernel, tiles, meanLen(req.SeqLens), e.hasDecode)]
		if err := launchDecode(decode, parts, tiles, decodeThreads, smemBytes, e.stream, &p); err != nil {
			return fmt.Errorf("cuda engine: decode: %w", err)
		}
		if e.sched.combine {
			if err := launchDecode(e.fn.combine, req.Batch, (rows+7)/8, 256, 0, e.stream, &p); err != nil {
				return fmt.Errorf("cuda engine: combine: %w", err)
			}
		}
		if err := copyOut(unsafe.Pointer(&req.Out[0]), s.out.ptr, len(req.Out)*2); err != nil {
			return err
		}
		return copyOut(unsafe.Pointer(&req.LSE[0]), s.lse.ptr, len(req.LSE)*4)
	})
}

// Close releases the module, the scratch buffers and the context; caches
// must be closed first. Closing twice is a no-op.
func (e *Engine) Close() error {
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return nil
	}
	err := e.do(func() error {
		e.closed = true
		var errs []error
		errs = append(errs, e.scratch.free())
		if err := e.mod.Unload(); err != nil {
			errs = append(errs, fmt.Errorf("cuda engine: unloading the module: %w", err))
		}
		return errors.Join(errs...)
	})
	if rerr := e.dev.ReleasePrimaryCtx(); rerr != nil {
		err = errors.Join(err, fmt.Errorf("cuda engine: releasing the primary context: %w", rerr))
	}
	return err
}

// needsCombine says whether a schedule of these lengths over parts parts
// leaves partials for the combine kernel.
func (e *Engine) needsCombine(lens []int32, parts int) bool {
	if e.fn.schedConsts == nil {
		return true // a module that does not say how it schedules
	}
	_, slots := splitSlots(lens, parts, *e.fn.schedConsts)
	return slots > 0
}

// loadScheduleConstants reads the module's mla_schedule_constants (tokens per
// block, the per-sequence charge, the unsplit slack); nil, nil for a module
// without them.
func (e *Engine) loadScheduleConstants(isNotFound func(error) bool) (*scheduleConstants, error) {
	const name = "mla_schedule_constants"
	ptr, size, err := e.mod.Global(name)
	switch {
	case isNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("cuda engine: looking up %s: %w", name, err)
	case size != 3*4:
		return nil, fmt.Errorf("cuda engine: %s is %d bytes, want 12", name, size)
	}
	var v [3]int32
	if err := copyOut(unsafe.Pointer(&v[0]), ptr, len(v)*4); err != nil {
		return nil, fmt.Errorf("cuda engine: reading %s: %w", name, err)
	}
	c := scheduleConstants{blockTokens: int(v[0]), overheadBlocks: int(v[1]), unsplitSlack: int(v[2])}
	if c.blockTokens != engine.PageSize || c.overheadBlocks < 0 || c.unsplitSlack < 0 {
		return nil, fmt.Errorf("cuda engine: the module schedules %d-token blocks with a charge of %d blocks and a slack "+
			"of %d; this engine needs %d-token blocks and no negative values: build the module from this "+
			"repository's kernels/ (make kernels)", c.blockTokens, c.overheadBlocks, c.unsplitSlack, engine.PageSize)
	}
	return &c, nil
}

func copyIn(dst cu.DevicePtr, src unsafe.Pointer, n int) error {
	if err := cu.MemcpyHtoD(dst, src, int64(n)); err != nil {
		return fmt.Errorf("cuda engine: copy to device (%d bytes): %w", n, err)
	}
	return nil
}

func copyOut(dst unsafe.Pointer, src cu.DevicePtr, n int) error {
	if err := cu.MemcpyDtoH(dst, src, int64(n)); err != nil {
		return fmt.Errorf("cuda engine: copy from device (%d bytes): %w", n, err)
	}
	return nil
}
