# Desk check of the pending v11 patch (hack/gpu/pending/), no GPU needed:
#   python3 hack/gpu/models/fused_combine_counters.py
# Model of the schedule (mla_decode_schedule) and the fused combine's
# counters (MLA_FUSED_COMBINE): every split sequence's counter for (tile, half, warp) gets
# exactly n arrivals, from its n pieces, no two sequences share one, and
# every index is inside MLA_COMBINE_COUNTERS(P) = 64 P.
import random
OVER = 2
def cdiv(a, b): return (a + b - 1) // b
def check(lens, P, tiles):
    B = len(lens)
    prefix, c = [], 0
    for L in lens:
        prefix.append(c); c += cdiv(L, 64) + OVER
    total = c; per = max(1, cdiv(total, P))
    split_base, slots = [], 0
    for b, L in enumerate(lens):
        first = prefix[b] + OVER; last = first + cdiv(L, 64) - 1
        n = last // per - first // per + 1
        split_base.append(slots); slots += n if n > 1 else 0
    assert slots <= 2 * P, (slots, P)
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
    check(lens, P, tiles)
print("counters: exactly n arrivals per split sequence, none shared, all in bounds")
