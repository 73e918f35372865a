// Package gpu finds the worker's GPUs through NVML, or the GPU a CPU-mode
// worker simulates.
//
// NVML must be initialised before any other call (calling into it first
// crashes the process), so Discover calls Init first and nothing else when
// that fails.
package gpu

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Device is one GPU as NVML describes it.
type Device struct {
	Index int
	// Name is NVML's name, e.g. "NVIDIA H100 80GB HBM3".
	Name string
	UUID string
	// TotalBytes and FreeBytes are device memory; total - free is what
	// others (and the driver's reservation) already hold.
	TotalBytes, FreeBytes      uint64
	ComputeMajor, ComputeMinor int
}

// Product is Name as GPU Feature Discovery writes it into the
// nvidia.com/gpu.product node label (spaces become dashes), so a worker's
// report and its node's labels name the GPU alike.
func (d Device) Product() string { return ProductName(d.Name) }

// ProductName turns an NVML device name into GPU Feature Discovery's
// product label value.
func ProductName(name string) string { return strings.ReplaceAll(strings.TrimSpace(name), " ", "-") }

// InUseBytes is memory the worker cannot have.
func (d Device) InUseBytes() int64 { return int64(d.TotalBytes - d.FreeBytes) }

// Inventory is what Discover found.
type Inventory struct {
	DriverVersion string
	Devices       []Device
}

// ErrUnavailable means NVML could not be used: no library, no driver, or no
// GPU. A worker falls back to CPU mode on it.
var ErrUnavailable = errors.New("NVML unavailable")

// Discover initialises lib (nvml.New() in production), reads every GPU and
// shuts it down again.
func Discover(lib nvml.Interface) (Inventory, error) {
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return Inventory{}, fmt.Errorf("%w: initialising NVML: %v", ErrUnavailable, ret)
	}
	defer lib.Shutdown()

	inv := Inventory{}
	version, ret := lib.SystemGetDriverVersion()
	if ret != nvml.SUCCESS {
		return Inventory{}, fmt.Errorf("reading the driver version: %v", ret)
	}
	inv.DriverVersion = version
	count, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return Inventory{}, fmt.Errorf("counting GPUs: %v", ret)
	}
	if count == 0 {
		return Inventory{}, fmt.Errorf("%w: the driver (version %s) sees no GPU", ErrUnavailable, version)
	}
	for i := range count {
		d, err := readDevice(lib, i)
		if err != nil {
			return Inventory{}, fmt.Errorf("GPU %d: %w", i, err)
		}
		inv.Devices = append(inv.Devices, d)
	}
	return inv, nil
}

func readDevice(lib nvml.Interface, i int) (Device, error) {
	h, ret := lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return Device{}, fmt.Errorf("getting its handle: %v", ret)
	}
	d := Device{Index: i}
	if d.Name, ret = h.GetName(); ret != nvml.SUCCESS {
		return Device{}, fmt.Errorf("reading its name: %v", ret)
	}
	if d.UUID, ret = h.GetUUID(); ret != nvml.SUCCESS {
		return Device{}, fmt.Errorf("reading its UUID: %v", ret)
	}
	// The v2 call counts memory the driver reserves as used, which the v1
	// call hides; drivers before R510 lack it, so fall back there.
	if m, ret := h.GetMemoryInfo_v2(); ret == nvml.SUCCESS {
		d.TotalBytes, d.FreeBytes = m.Total, m.Free
	} else if ret == nvml.ERROR_NOT_SUPPORTED || ret == nvml.ERROR_FUNCTION_NOT_FOUND {
		m, ret := h.GetMemoryInfo()
		if ret != nvml.SUCCESS {
			return Device{}, fmt.Errorf("reading its memory: %v", ret)
		}
		d.TotalBytes, d.FreeBytes = m.Total, m.Free
	} else {
		return Device{}, fmt.Errorf("reading its memory: %v", ret)
	}
	if d.ComputeMajor, d.ComputeMinor, ret = h.GetCudaComputeCapability(); ret != nvml.SUCCESS {
		return Device{}, fmt.Errorf("reading its compute capability: %v", ret)
	}
	return d, nil
}

// Simulated is the GPU a CPU-mode worker sizes its pool for.
type Simulated struct {
	Product     string
	MemoryBytes int64
}

// ParseSimulated reads "<product>:<memoryMiB>" (the MLA_SIMULATED_GPU
// environment variable, written from the node's GPU Feature Discovery
// labels).
func ParseSimulated(s string) (Simulated, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 || i == len(s)-1 {
		return Simulated{}, fmt.Errorf("simulated GPU %q: want <product>:<memoryMiB>", s)
	}
	mib, err := strconv.ParseInt(s[i+1:], 10, 64)
	if err != nil || mib <= 0 || mib > 1<<30 {
		return Simulated{}, fmt.Errorf("simulated GPU %q: memory %q is not a positive number of MiB", s, s[i+1:])
	}
	return Simulated{Product: s[:i], MemoryBytes: mib << 20}, nil
}
