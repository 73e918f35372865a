package cuda

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

// loadedAll and loadedRequired stand for a module with every decode
// kernel and for one with only the required ones.
func loadedAll(string) bool { return true }

func loadedRequired(kernel string) func(string) bool {
	required, _ := decodeFunctions(kernel)
	return func(name string) bool { return slices.Contains(required, name) }
}

func TestDecodeFunctionName(t *testing.T) {
	for _, c := range []struct {
		kernel  string
		tiles   int
		meanLen int
		loaded  func(string) bool
		want    string
	}{
		{KernelAuto, 1, 32768, loadedAll, "mla_decode_wgmma"},                    // h_q <= 64, s_q = 1
		{KernelAuto, 2, 4096, loadedAll, "mla_decode_seesaw"},                    // h_q = 128
		{KernelAuto, 2, 1024, loadedAll, "mla_decode_seesaw"},                    // at the threshold
		{KernelAuto, 2, 1023, loadedAll, "mla_decode_wgmma"},                     // short sequences
		{KernelAuto, 4, 16384, loadedAll, "mla_decode_seesaw"},                   // h_q = 128, s_q = 2
		{KernelAuto, 3, 4096, loadedAll, "mla_decode_seesaw"},                    // three tiles
		{KernelAuto, 2, 4096, loadedRequired(KernelSeesaw), "mla_decode_seesaw"}, // a module with only seesaw
		{KernelAuto, 2, 0, loadedAll, "mla_decode_wgmma"},
		{KernelAuto, 2, 4096, loadedRequired(KernelAuto), "mla_decode_wgmma"}, // a module without seesaw
		{KernelWGMMA, 2, 32768, loadedAll, "mla_decode_wgmma"},                // explicit choices are kept
		{KernelSeesaw, 1, 1, loadedAll, "mla_decode_seesaw"},
		{KernelSeesaw, 2, 1, loadedAll, "mla_decode_seesaw"}, // the pair kernel, even where loaded, is never chosen
		{KernelMMA, 2, 4096, loadedAll, "mla_decode_mma"},
	} {
		if got := decodeFunctionName(c.kernel, c.tiles, c.meanLen, c.loaded); got != c.want {
			t.Errorf("decodeFunctionName(%s, %d, %d) = %s, want %s", c.kernel, c.tiles, c.meanLen, got, c.want)
		}
	}
}

// An engine loads the required decode functions and those optional ones
// its module has, and nothing else, so every choice must be among them
// whichever optional ones are missing.
func TestDecodeFunctionNameChoosesALoadedFunction(t *testing.T) {
	for _, kernel := range []string{KernelAuto, KernelSeesaw, KernelWGMMA, KernelMMA} {
		required, optional := decodeFunctions(kernel)
		for subset := 0; subset < 1<<len(optional); subset++ {
			loaded := slices.Clone(required)
			for i, name := range optional {
				if subset&(1<<i) != 0 {
					loaded = append(loaded, name)
				}
			}
			has := func(name string) bool { return slices.Contains(loaded, name) }
			for _, tiles := range []int{1, 2, 3, 4} {
				for _, mean := range []int{0, 1, seesawMinMeanLen - 1, seesawMinMeanLen, 32768} {
					if got := decodeFunctionName(kernel, tiles, mean, has); !has(got) {
						t.Errorf("kernel %s, %d tiles, mean length %d: decodeFunctionName = %s, not among the loaded %v",
							kernel, tiles, mean, got, loaded)
					}
				}
			}
		}
	}
}

func TestMeanLen(t *testing.T) {
	for _, c := range []struct {
		lens []int32
		want int
	}{
		{nil, 0},
		{[]int32{1}, 1},
		{[]int32{1, 2}, 1},
		{[]int32{4096, 2048, 6144}, 4096},
		{[]int32{2147483647, 2147483647}, 2147483647}, // no overflow
	} {
		if got := meanLen(c.lens); got != c.want {
			t.Errorf("meanLen(%v) = %d, want %d", c.lens, got, c.want)
		}
	}
}

// The errors of moduleWith's lookups: a function the module lacks, and
// one it has but cannot load.
var (
	errNotFound = errors.New("not found")
	errBroken   = errors.New("broken image")
)

// moduleWith is a lookup over a module that has the given functions; any
// other name fails with errNotFound, and broken names with errBroken.
func moduleWith(broken []string, names ...string) func(string) (string, error) {
	return func(name string) (string, error) {
		switch {
		case slices.Contains(broken, name):
			return "", errBroken
		case slices.Contains(names, name):
			return "fn:" + name, nil
		}
		return "", errNotFound
	}
}

func TestLoadDecodeFunctions(t *testing.T) {
	isNotFound := func(err error) bool { return errors.Is(err, errNotFound) }
	for _, c := range []struct {
		name    string
		kernel  string
		lookup  func(string) (string, error)
		want    []string
		wantErr error
	}{
		{"auto, full module", KernelAuto, moduleWith(nil, "mla_decode_wgmma", "mla_decode_seesaw", "mla_decode_seesaw_pair", "mla_decode_mma"),
			[]string{"mla_decode_seesaw", "mla_decode_wgmma"}, nil},
		{"auto without seesaw", KernelAuto, moduleWith(nil, "mla_decode_wgmma"), []string{"mla_decode_wgmma"}, nil},
		{"auto without wgmma", KernelAuto, moduleWith(nil, "mla_decode_seesaw"), nil, errNotFound},
		{"auto, seesaw unreadable", KernelAuto, moduleWith([]string{"mla_decode_seesaw"}, "mla_decode_wgmma"), nil, errBroken},
		{"seesaw without seesaw", KernelSeesaw, moduleWith(nil, "mla_decode_wgmma"), nil, errNotFound},
		{"mma", KernelMMA, moduleWith(nil, "mla_decode_wgmma", "mla_decode_mma"), []string{"mla_decode_mma"}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := loadDecodeFunctions(c.kernel, c.lookup, isNotFound)
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("error %v, want %v", err, c.wantErr)
			}
			// A missing required kernel names the variant that needs it.
			if errors.Is(err, errNotFound) && !strings.Contains(err.Error(), fmt.Sprintf("variant %q needs", c.kernel)) {
				t.Errorf("error %q does not name the variant %q", err, c.kernel)
			}
			if err != nil {
				return
			}
			names := slices.Sorted(maps.Keys(got))
			if !slices.Equal(names, c.want) {
				t.Fatalf("loaded %v, want %v", names, c.want)
			}
			for name, f := range got {
				if f != "fn:"+name {
					t.Errorf("%s is %q, want the module's function", name, f)
				}
			}
		})
	}
}
