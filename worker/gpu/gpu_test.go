package gpu

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// fakeNVML is a mock NVML that records calls, so tests can check nothing
// is called before a successful Init.
type fakeNVML struct {
	initRet  nvml.Return
	v2Ret    nvml.Return
	calls    []string
	shutdown int
}

func (f *fakeNVML) lib() *mock.Interface {
	dev := &mock.Device{
		GetNameFunc: func() (string, nvml.Return) {
			f.calls = append(f.calls, "name")
			return "NVIDIA H100 80GB HBM3", nvml.SUCCESS
		},
		GetUUIDFunc: func() (string, nvml.Return) { return "GPU-0c3d", nvml.SUCCESS },
		GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
			return nvml.Memory_v2{Total: 85520809984, Free: 84987740160, Used: 533069824}, f.v2Ret
		},
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			return nvml.Memory{Total: 85520809984, Free: 85000000000}, nvml.SUCCESS
		},
		GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) { return 9, 0, nvml.SUCCESS },
	}
	return &mock.Interface{
		InitFunc:     func() nvml.Return { f.calls = append(f.calls, "init"); return f.initRet },
		ShutdownFunc: func() nvml.Return { f.shutdown++; return nvml.SUCCESS },
		SystemGetDriverVersionFunc: func() (string, nvml.Return) {
			f.calls = append(f.calls, "driver")
			return "550.54.15", nvml.SUCCESS
		},
		DeviceGetCountFunc:         func() (int, nvml.Return) { f.calls = append(f.calls, "count"); return 1, nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(int) (nvml.Device, nvml.Return) { return dev, nvml.SUCCESS },
	}
}

func TestDiscoverReadsEveryField(t *testing.T) {
	f := &fakeNVML{initRet: nvml.SUCCESS, v2Ret: nvml.SUCCESS}
	inv, err := Discover(f.lib())
	if err != nil {
		t.Fatal(err)
	}
	if inv.DriverVersion != "550.54.15" || len(inv.Devices) != 1 {
		t.Fatalf("inventory = %+v", inv)
	}
	d := inv.Devices[0]
	if d.Product() != "NVIDIA-H100-80GB-HBM3" || d.UUID != "GPU-0c3d" || d.ComputeMajor != 9 || d.ComputeMinor != 0 ||
		d.TotalBytes != 85520809984 || d.InUseBytes() != 85520809984-84987740160 {
		t.Fatalf("device = %+v", d)
	}
	if f.calls[0] != "init" || f.shutdown != 1 {
		t.Errorf("calls %v, shutdowns %d: want init first and one shutdown", f.calls, f.shutdown)
	}
}

func TestDiscoverFallsBackToV1MemoryOnOldDrivers(t *testing.T) {
	f := &fakeNVML{initRet: nvml.SUCCESS, v2Ret: nvml.ERROR_FUNCTION_NOT_FOUND}
	inv, err := Discover(f.lib())
	if err != nil {
		t.Fatal(err)
	}
	if inv.Devices[0].FreeBytes != 85000000000 {
		t.Errorf("free bytes = %d, want the v1 value", inv.Devices[0].FreeBytes)
	}
}

func TestDiscoverCallsNothingWhenInitFails(t *testing.T) {
	for _, ret := range []nvml.Return{nvml.ERROR_LIBRARY_NOT_FOUND, nvml.ERROR_DRIVER_NOT_LOADED} {
		f := &fakeNVML{initRet: ret}
		_, err := Discover(f.lib())
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("init %v: error %v, want ErrUnavailable", ret, err)
		}
		if len(f.calls) != 1 || f.shutdown != 0 {
			t.Errorf("init %v: calls %v and %d shutdowns after a failed init", ret, f.calls, f.shutdown)
		}
	}
}

func TestDiscoverWithoutLibraryOnThisMachine(t *testing.T) {
	// The real library: on a machine without a driver this must fail
	// cleanly rather than crash; with one, it must find a GPU.
	inv, err := Discover(nvml.New())
	if err != nil {
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Discover without a driver = %v, want ErrUnavailable", err)
		}
		return
	}
	if len(inv.Devices) == 0 || inv.Devices[0].TotalBytes == 0 {
		t.Fatalf("NVML initialised but found %+v", inv)
	}
}

func TestParseSimulated(t *testing.T) {
	s, err := ParseSimulated("NVIDIA-H100-80GB-HBM3:81559")
	if err != nil {
		t.Fatal(err)
	}
	if s.Product != "NVIDIA-H100-80GB-HBM3" || s.MemoryBytes != 81559<<20 {
		t.Fatalf("parsed %+v", s)
	}
	for _, bad := range []string{"", "H100", ":80", "H100:", "H100:0", "H100:-5", "H100:80GB", "H100:99999999999999"} {
		if _, err := ParseSimulated(bad); err == nil || !strings.Contains(err.Error(), "simulated GPU") {
			t.Errorf("ParseSimulated(%q) = %v, want an error", bad, err)
		}
	}
}

func FuzzParseSimulated(f *testing.F) {
	for _, s := range []string{"NVIDIA-H100-80GB-HBM3:81559", "NVIDIA-H200:143771", "a:b:1", ":", "x:-1", "x:1e3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sim, err := ParseSimulated(s)
		if err != nil {
			return
		}
		if sim.Product == "" || sim.MemoryBytes <= 0 || sim.MemoryBytes%(1<<20) != 0 {
			t.Fatalf("ParseSimulated(%q) = %+v", s, sim)
		}
		again, err := ParseSimulated(sim.Product + ":" + strconv.FormatInt(sim.MemoryBytes>>20, 10))
		if err != nil || again != sim {
			t.Fatalf("%+v does not round-trip: %+v, %v", sim, again, err)
		}
	})
}
