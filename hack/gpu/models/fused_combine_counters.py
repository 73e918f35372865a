# Desk check of v11 code in kernels/mla_decode.cu (written before a GPU ran it), no GPU needed:
#   python3 hack/gpu/models/fused_combine_counters.py
# Model of the schedule (mla_decode_schedule) and the fused combine's
# counters (MLA_FUSED_COMBINE): every split sequence's counter for (tile, half, warp) gets
# exactly n arrivals, from its n pieces, no two sequences share one, and
# every index is inside MLA_COMBINE_COUNTERS(P) = 64 P. With
# MLA_SCHED_UNSPLIT_SLACK (the part size may grow where that splits no
# sequence) the same, the parts still cover every block within P parts,
# and where the larger size is taken no sequence is split.
import bisect
import os
import random
import re
# The charge and the slack as kernels/mla_decode_params.h defaults them.
with open(os.path.join(os.path.dirname(__file__), "../../../kernels/mla_decode_params.h")) as f:
    params = f.read()
OVER = int(re.search(r"#define MLA_SEQ_OVERHEAD_BLOCKS (\d+)", params).group(1))
SLACK = int(re.search(r"#define MLA_SCHED_UNSPLIT_SLACK (\d+)", params).group(1))
def cdiv(a, b): return (a + b - 1) // b
def sequence_at(prefix, x):  # the kernel's binary search: the largest b with prefix[b] <= x
    return bisect.bisect_right(prefix, x) - 1
def part_size(prefix, total, P, slack):
    per = max(1, cdiv(total, P))
    for cand in range(per, per + slack):
        if all(x - prefix[sequence_at(prefix, x)] <= OVER for x in range(cand, total, cand)):
            return cand
    return per
def check(lens, P, tiles, slack=0):
    prefix, c = [], 0
    for L in lens:
        prefix.append(c); c += cdiv(L, 64) + OVER
    total = c; per = part_size(prefix, total, P, slack)
    # Part p owns cost positions [p per, (p + 1) per): these tile the line,
    # so every block is in one part, and in one of the P launched if:
    assert cdiv(total, per) <= P
    split_base, slots = [], 0
    for b, L in enumerate(lens):
        first = prefix[b] + OVER; last = first + cdiv(L, 64) - 1
        n = last // per - first // per + 1
        split_base.append(slots); slots += n if n > 1 else 0
    assert slots <= 2 * P, (slots, P)
    assert per == max(1, cdiv(total, P)) or slots == 0, ("a larger part size that splits", per, slots)
    arrivals = {}
    for part in range(P):
        lo, hi = part * per, part * per + per - 1
        for b, L in enumerate(lens):
            first = prefix[b] + OVER; nb = cdiv(L, 64)
            k0, k1 = max(0, lo - first), min(nb - 1, hi - first)
            if k0 > k1: continue
            sf, sl = first // per, (first + nb - 1) // per
            if sf == sl: continue
            slot0 = split_base[b]; n = sl - sf + 1
            for tile in range(tiles):
                for h in range(2):
                    for g in range(4):
                        idx = ((slot0 * 4 + tile) * 2 + h) * 4 + g
                        assert idx < 64 * P
                        arrivals.setdefault(idx, []).append((b, n, part))
    for idx, a in arrivals.items():
        bs = {x[0] for x in a}; assert len(bs) == 1, (idx, a)
        n = a[0][1]; assert len(a) == n, (idx, a)
        assert len({x[2] for x in a}) == n
random.seed(1)
for it in range(20000):
    B = random.randint(1, 160); P = random.choice([1, 2, 3, 5, 8, 33, 66, 132])
    tiles = random.randint(1, 4)
    lens = [random.choice([1, 63, 64, 65, random.randint(1, 40000)]) for _ in range(B)]
    if it % 4 == 0:  # one length for the batch: where the larger part size applies
        lens = [random.choice([64, 1024, 4096, 16384, random.randint(1, 9000)])] * B
    check(lens, P, tiles, random.choice([0, 5, SLACK]))
# The anchor shapes the slack is for (h_q = 128: 66 parts), and small
# cases worked by hand, sequences of 3 blocks (5 units): 3 over 2 parts,
# balanced 8 units (the edge 3 units into the second sequence, past its
# 2-unit charge: a split), 9 splits too, 10 is whole; 4 over 3 parts,
# balanced 7 (edges 2 units into the second sequence, in its charge, and
# 4 into the third), 8 and 9 split, 10 is whole with 2 parts used; 4 over
# 4 parts, 5 is whole at once. 3 one-block sequences (3 units) over 2
# parts: balanced 5 puts the edge on the second one's block, whole.
for B, L, P, per in ((128, 1024, 66, 36), (64, 4096, 66, 66), (128, 4096, 66, 132), (64, 1024, 66, 18),
                     (128, 16384, 66, 501), (3, 192, 2, 10), (4, 192, 3, 10), (4, 192, 4, 5), (3, 64, 2, 5)):
    prefix = [b * (cdiv(L, 64) + OVER) for b in range(B)]
    assert part_size(prefix, B * (cdiv(L, 64) + OVER), P, 5) == per, (B, L, P, part_size(prefix, B * (cdiv(L, 64) + OVER), P, 5))
print("counters: exactly n arrivals per split sequence, none shared, all in bounds")
