// The schedule kernel's result, predicted on the host. This file has no
// build tag: it is pure, so its table test runs in CI.

package cuda

// scheduleConstants are the schedule kernel's compile-time constants, as
// the module reports them (its mla_schedule_constants).
type scheduleConstants struct {
	blockTokens    int // tokens per KV block (the page)
	overheadBlocks int // the fixed charge of a sequence, in blocks
	unsplitSlack   int // how many part sizes, from the balanced one up, are tried for a split-free schedule (at most slack - 1 above it)
}

// splitSlots mirrors mla_decode_schedule (kernels/mla_decode.cu) for one
// batch over parts parts: it returns the part size in units (blocks plus
// charges) and the number of partial slots, the sum of the piece counts of
// the sequences split across parts. Zero slots means every sequence lies
// in one part and is written out by the decode kernel, so the combine
// launch has nothing to do. The GPU test checks both numbers against the
// kernel's workspace; any change to the kernel's arithmetic must be made
// here too.
func splitSlots(lens []int32, parts int, c scheduleConstants) (per, slots int) {
	cdiv := func(a, b int) int { return (a + b - 1) / b }
	prefix := make([]int, len(lens)+1)
	for b, l := range lens {
		prefix[b+1] = prefix[b] + cdiv(int(l), c.blockTokens) + c.overheadBlocks
	}
	total := prefix[len(lens)]
	per = max(1, cdiv(total, parts))
	// sequenceAt is the sequence whose units hold position x: the last b
	// with prefix[b] <= x.
	sequenceAt := func(x int) int {
		lo, hi := 0, len(lens)-1
		for lo < hi {
			mid := (lo + hi + 1) / 2
			if prefix[mid] <= x {
				lo = mid
			} else {
				hi = mid - 1
			}
		}
		return lo
	}
	for cand := per; cand < per+c.unsplitSlack; cand++ {
		whole := true
		for x := cand; whole && x < total; x += cand {
			whole = x-prefix[sequenceAt(x)] <= c.overheadBlocks
		}
		if whole {
			per = cand
			break
		}
	}
	for b, l := range lens {
		first := prefix[b] + c.overheadBlocks
		last := first + cdiv(int(l), c.blockTokens) - 1
		if n := last/per - first/per + 1; n > 1 {
			slots += n
		}
	}
	return per, slots
}
