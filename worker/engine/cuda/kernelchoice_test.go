package cuda

import (
	"slices"
	"testing"
)

func TestDecodeFunctionName(t *testing.T) {
	for _, c := range []struct {
		kernel  string
		tiles   int
		meanLen int
		want    string
	}{
		{KernelAuto, 1, 32768, "mla_decode_wgmma"},  // h_q <= 64, s_q = 1
		{KernelAuto, 2, 4096, "mla_decode_seesaw"},  // h_q = 128
		{KernelAuto, 2, 2048, "mla_decode_seesaw"},  // at the threshold
		{KernelAuto, 2, 2047, "mla_decode_wgmma"},   // short sequences
		{KernelAuto, 4, 16384, "mla_decode_seesaw"}, // h_q = 128, s_q = 2
		{KernelAuto, 2, 0, "mla_decode_wgmma"},
		{KernelWGMMA, 2, 32768, "mla_decode_wgmma"}, // explicit choices are kept
		{KernelSeesaw, 1, 1, "mla_decode_seesaw"},
		{KernelMMA, 2, 4096, "mla_decode_mma"},
	} {
		if got := decodeFunctionName(c.kernel, c.tiles, c.meanLen); got != c.want {
			t.Errorf("decodeFunctionName(%s, %d, %d) = %s, want %s", c.kernel, c.tiles, c.meanLen, got, c.want)
		}
	}
}

// An engine loads decodeFunctionNames(kernel) and nothing else, so every
// choice decodeFunctionName makes must be among them.
func TestDecodeFunctionNamesCoverEveryChoice(t *testing.T) {
	for _, kernel := range []string{KernelAuto, KernelSeesaw, KernelWGMMA, KernelMMA} {
		loaded := decodeFunctionNames(kernel)
		for _, tiles := range []int{1, 2, 3, 4} {
			for _, mean := range []int{0, 1, seesawMinMeanLen - 1, seesawMinMeanLen, 32768} {
				if got := decodeFunctionName(kernel, tiles, mean); !slices.Contains(loaded, got) {
					t.Errorf("kernel %s, %d tiles, mean length %d: decodeFunctionName = %s, not among the loaded %v",
						kernel, tiles, mean, got, loaded)
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
