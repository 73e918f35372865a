# Desk check of v11 code in kernels/mla_decode.cu (written before a GPU ran it), no GPU needed:
#   python3 hack/gpu/models/quad_exchange.py
# Lane-level model of store_row's shuffles under MLA_EPILOGUE_QUAD: the bf16
# 4x4 xor exchange and the fp32 two-round exchange. A lane holds o[n] = the
# pair of columns 8 n + 2 (lane % 4), + 1 of its row; every stored 16-byte
# chunk must hold the columns its address says, and every column must be
# stored once.
def fp32():
    out = {}
    for g in range(8):  # quads of rows: lanes 4r..4r+3
        lanes = range(4*g, 4*g+4)
        o = {l: {n: (8*n + 2*(l%4), 8*n + 2*(l%4) + 1) for n in range(32)} for l in lanes}
        for a in range(0, 32, 2):
            offer_x = {}; offer_y = {}
            for l in lanes:
                odd = l & 1
                offer_x[l] = o[l][a+1] if odd else o[l][a]
                offer_y[l] = o[l][a] if odd else o[l][a+1]
            for l in lanes:
                qd = l & 3
                k = ((qd & 1) << 1) | (qd >> 1)
                u = offer_x[4*g + k]; v = offer_y[4*g + (k ^ 1)]
                vals = u + v if qd < 2 else v + u
                base = 8*a + 4*qd
                for j, c in enumerate(vals):
                    assert c == base + j, (g, a, qd, vals, base)
                    out[(g, base + j)] = c
    assert len(out) == 8*256
def bf16():
    for l0 in range(0, 32, 4):
        o = {l: {n: (8*n + 2*(l%4), 8*n + 2*(l%4)+1) for n in range(32)} for l in range(l0, l0+4)}
        for g in range(8):
            v = {l: [o[l][4*g+j] for j in range(4)] for l in o}
            got = {l: [None]*4 for l in o}
            for r in range(4):
                send = {l: v[l][(l & 3) ^ r] for l in o}
                for l in o:
                    qd = l & 3; si = qd ^ r
                    x = send[l] if r == 0 else send[l ^ r]
                    got[l][si] = x
            for l in o:
                qd = l & 3
                cols = [c for pr in got[l] for c in pr]
                assert cols == list(range(8*(4*g+qd), 8*(4*g+qd)+8)), (l, g, cols)
fp32(); bf16(); print("quad exchanges: every column lands where it belongs")
