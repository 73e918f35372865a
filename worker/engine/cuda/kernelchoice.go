// Which decode kernel of the module a call runs. This file has no build
// tag: the choice is pure, so its table test runs in CI, where the rest of
// the package (behind the cuda tag) does not build.

package cuda

import (
	"fmt"
	"slices"
)

// Decode kernel variants in the module. All implement the same contract.
// wgmma is Hopper's warpgroup tensor-core path with both warpgroups in
// lockstep; seesaw lets them take turns so one's softmax overlaps the
// other's matrix work; mma is the mma.sync fallback. auto picks per call
// (decodeFunctionName). docs/kernel-notes.md has the measurements.
const (
	KernelAuto   = "auto"
	KernelSeesaw = "seesaw"
	KernelWGMMA  = "wgmma"
	KernelMMA    = "mma"
)

// DefaultKernel is the variant an engine uses unless told otherwise.
const DefaultKernel = KernelAuto

// seesawMinMeanLen is the mean sequence length from which auto prefers
// seesaw for multi-tile queries. Measured side by side (H100, 2026-11-27,
// v10, docs/benchmarks.md): at h_q = 128 seesaw runs 1.14-1.17x as fast
// as wgmma at s_k = 4096 and 1.21-1.28x from s_k = 16384, 1.10x on mixed
// lengths, 1.13-1.29x at s_q = 2. At s_k = 1024 it was 1.03x for b = 64
// but 0.91x for b = 128, where its per-piece costs weighed most, until
// v11's schedule stopped splitting equal short sequences: 1.05x (b = 64)
// and 1.08-1.16x (b = 128) on H100, 2026-12-05. Shorter means are not
// measured and stay with wgmma.
const seesawMinMeanLen = 1024

// decodeFunctionName is the module function that a decode call with the
// given number of 64-row query tiles (s_q x h_q rows) and mean sequence
// length runs under kernel; loaded says whether the engine has a function.
// auto: wgmma for one tile, where its lockstep warpgroups are at 0.82-1.08
// of FlashMLA and seesaw is within 2% of it on every shape (both at the
// card's DRAM limit from s_k = 4096; H100, 2026-12-05, v14); seesaw for
// several tiles (h_q = 128, or s_q = 2 with h_q = 64) unless the sequences
// are short or the module lacks it. Other
// functions a module may carry (v11's mla_decode_seesaw_pair, which lost
// on every shape) are never chosen.
func decodeFunctionName(kernel string, tiles int, meanLen int, loaded func(name string) bool) string {
	if kernel == KernelAuto {
		kernel = KernelWGMMA
		if tiles > 1 && meanLen >= seesawMinMeanLen && loaded(decodeFunction(KernelSeesaw)) {
			kernel = KernelSeesaw
		}
	}
	return decodeFunction(kernel)
}

// decodeFunctions are the module functions an engine of variant kernel
// loads. It fails without a required one; an optional one is an
// alternative that auto takes where the module has it, so a module built
// from an older kernel source (EnvModule) still serves, on the kernels it
// has.
func decodeFunctions(kernel string) (required, optional []string) {
	if kernel == KernelAuto {
		return []string{decodeFunction(KernelWGMMA)}, []string{decodeFunction(KernelSeesaw)}
	}
	return []string{decodeFunction(kernel)}, nil
}

// loadDecodeFunctions looks up the decode functions of variant kernel with
// lookup: every required one, and the optional ones the module has (lookup's
// error satisfies isNotFound for a function the module lacks). Generic over
// the function type so that this policy is tested without a GPU.
func loadDecodeFunctions[F any](kernel string, lookup func(name string) (F, error), isNotFound func(error) bool) (map[string]F, error) {
	required, optional := decodeFunctions(kernel)
	loaded := map[string]F{}
	for _, name := range slices.Concat(required, optional) {
		f, err := lookup(name)
		switch {
		case err == nil:
			loaded[name] = f
		case !isNotFound(err):
			return nil, fmt.Errorf("kernel %s: %w", name, err)
		case slices.Contains(required, name):
			return nil, fmt.Errorf("the module has no kernel %s, which decode kernel variant %q needs: %w", name, kernel, err)
		}
		// An optional one the module lacks: auto runs without it (decodeFunctionName).
	}
	return loaded, nil
}

// decodeFunction is the module function of a decode kernel variant.
func decodeFunction(kernel string) string { return "mla_decode_" + kernel }

// meanLen is the mean of a batch's sequence lengths (0 for none).
func meanLen(lens []int32) int {
	if len(lens) == 0 {
		return 0
	}
	var sum int64
	for _, l := range lens {
		sum += int64(l)
	}
	return int(sum / int64(len(lens)))
}
