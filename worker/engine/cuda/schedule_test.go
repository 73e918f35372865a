package cuda

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// equalLens is a batch of n sequences of tokens tokens each (shared with
// the GPU tests).
func equalLens(n, tokens int) []int32 {
	lens := make([]int32, n)
	for i := range lens {
		lens[i] = int32(tokens)
	}
	return lens
}

// Worked by hand from the kernel's rules (the numbers its comments quote).
func TestSplitSlots(t *testing.T) {
	committed := scheduleConstants{blockTokens: 64, overheadBlocks: 2, unsplitSlack: 8}
	balanced := committed
	balanced.unsplitSlack = 0
	for _, tc := range []struct {
		name       string
		lens       []int32
		parts      int
		c          scheduleConstants
		per, slots int
	}{
		// 18 units a sequence, 2,304 over 66 parts balance at 35; 36 puts
		// every edge on a sequence's start.
		{"128x1024 h_q=128", equalLens(128, 1024), 66, committed, 36, 0},
		// At 35, sequence b's blocks are units 18 b + 2 .. 18 b + 17: split
		// unless a multiple of 35 falls outside them, 56 sequences of 128.
		{"128x1024 h_q=128 balanced", equalLens(128, 1024), 66, balanced, 35, 112},
		{"64x4096 h_q=128", equalLens(64, 4096), 66, committed, 66, 0},
		// 66 units a sequence over 64 per part: every sequence but the
		// first crosses an edge (62 of 64 in two pieces, as the notes say).
		{"64x4096 h_q=128 balanced", equalLens(64, 4096), 66, balanced, 64, 124},
		// 18 units over 9 per part: the unsplit size (18) is 9 above the
		// balanced one, past the 8 sizes tried, so every sequence is cut
		// in two.
		{"64x1024 h_q=16", equalLens(64, 1024), 132, committed, 9, 128},
		// The ends of the slack range: the 8 sizes tried are per .. per + 7.
		// Over 105 parts the balanced size is 11 and 18 = 11 + 7 is taken;
		// over 116 parts it is 10, and 18 = 10 + 8 is not.
		{"64x1024 over 105, slack's last size", equalLens(64, 1024), 105, committed, 18, 0},
		{"64x1024 over 116, past the slack", equalLens(64, 1024), 116, committed, 10, 154},
		// The C++ check's case: 6 units each, 12 per part, one part empty.
		{"6x200 over 4", equalLens(6, 200), 4, committed, 12, 0},
		{"one token", []int32{1}, 132, committed, 1, 0},
		// 9,000 tokens, 141 blocks + 2 over 132 parts of 2 units: the
		// sequence takes parts 1 to 71.
		{"one long sequence", []int32{9000}, 132, committed, 2, 71},
	} {
		t.Run(tc.name, func(t *testing.T) {
			per, slots := splitSlots(tc.lens, tc.parts, tc.c)
			if per != tc.per || slots != tc.slots {
				t.Errorf("splitSlots = per %d, slots %d; want per %d, slots %d", per, slots, tc.per, tc.slots)
			}
		})
	}
}

// splitSlotsByEnumeration restates the schedule without its shortcuts:
// every block is placed on the cost line and given part pos / per, a
// part size is split-free when every part's first position is inside some
// sequence's charge, and a sequence's slots are its distinct parts when
// it has more than one.
func splitSlotsByEnumeration(lens []int32, parts int, c scheduleConstants) (per, slots int) {
	var starts []int // each sequence's first unit
	total := 0
	for _, l := range lens {
		starts = append(starts, total)
		total += (int(l)+c.blockTokens-1)/c.blockTokens + c.overheadBlocks
	}
	per = max(1, (total+parts-1)/parts)
	inCharge := func(x int) bool {
		for _, s := range starts {
			if x >= s && x <= s+c.overheadBlocks {
				return true
			}
		}
		return false
	}
	for cand := per; cand < per+c.unsplitSlack; cand++ {
		ok := true
		for k := 1; k*cand < total; k++ {
			ok = ok && inCharge(k*cand)
		}
		if ok {
			per = cand
			break
		}
	}
	for b, l := range lens {
		var owners []int
		for k := range (int(l) + c.blockTokens - 1) / c.blockTokens {
			owner := (starts[b] + c.overheadBlocks + k) / per
			if !slices.Contains(owners, owner) {
				owners = append(owners, owner)
			}
		}
		if len(owners) > 1 {
			slots += len(owners)
		}
	}
	return per, slots
}

func TestSplitSlotsMatchesEnumeration(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 9))
	unsplit := 0
	for i := range 3000 {
		n := 1 + rng.IntN(40)
		lens := make([]int32, n)
		same := rng.IntN(2) == 0
		for b := range lens {
			if same && b > 0 {
				lens[b] = lens[0]
			} else {
				lens[b] = 1 + rng.Int32N(3000)
			}
		}
		parts := 1 + rng.IntN(132)
		c := scheduleConstants{blockTokens: 64, overheadBlocks: rng.IntN(4), unsplitSlack: rng.IntN(12)}
		per, slots := splitSlots(lens, parts, c)
		wantPer, wantSlots := splitSlotsByEnumeration(lens, parts, c)
		if per != wantPer || slots != wantSlots {
			t.Fatalf("case %d (lens %v, %d parts, %+v): per %d slots %d, enumeration per %d slots %d",
				i, lens, parts, c, per, slots, wantPer, wantSlots)
		}
		if slots == 0 {
			unsplit++
		}
	}
	if unsplit < 100 {
		t.Errorf("only %d unsplit cases of 3000: the generator misses the interesting half", unsplit)
	}
}
