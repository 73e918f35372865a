# Desk check of v11 code in kernels/mla_decode.cu (written before a GPU ran it), no GPU needed:
#   python3 hack/gpu/models/panel_barrier_phases.py
# Sequential model of the seesaw kernel's per-panel barriers
# (MLA_PANEL_BARRIERS): which block each fill of a stage's nine panel
# barriers carries, and that every wait's parity is the index of the fill
# holding the block it reads, modulo 2, over random lists of pieces (1-9
# blocks, odd and even, one-block pieces, hand-over to the next piece).
# Per CTA; in the pair kernel both CTAs run the same sequence and each
# barrier gets one expect per fill.
import random
SHARE={(0,0):[0,1,2,3],(0,1):[4,5,6,7,8],(1,0):[0,1,2,3,8],(1,1):[4,5,6,7]}
def run(pieces):
    fills={(s,pn):[] for s in (0,1) for pn in range(9)}   # list of block ids per barrier
    def copy(s,w,blk):
        for pn in SHARE[(s,w)]: fills[(s,pn)].append(blk)
    def wait(s,pn,parity,blk):
        f=fills[(s,pn)]
        assert blk in f, ("waited block never filled",s,pn,blk)
        idx=f.index(blk)
        assert idx&1==parity,("parity",s,pn,blk,idx,parity)
    def wait_share(s,w,par,blk):
        for pn in SHARE[(s,w)]: wait(s,pn,par,blk)
    P=len(pieces)
    copy(0,0,(0,0)); copy(0,1,(0,0))
    if pieces[0]>1: copy(1,0,(0,1)); copy(1,1,(0,1))
    phase=[0,0]
    for c in range(P):
        n=pieces[c]; nxt=c+1 if c+1<P else None
        # first QK^T
        wait_share(0,0,phase[0],(c,0)); wait_share(0,1,phase[0],(c,0))
        if n>1: wait_share(1,1,phase[1],(c,1)); wait_share(1,0,phase[1],(c,1))
        i0=0
        def pair(qk0,qk1,has1):
            nonlocal i0
            fill0= qk0 or nxt is not None
            fill1= qk1 if qk0 else (nxt is not None and pieces[nxt]>1)
            nb0=(c,i0+2) if qk0 else (nxt,0); nb1=(c,i0+3) if qk0 else (nxt,1)
            # wg0 then wg1 program order; cross-wg ordering irrelevant for parity indices
            if fill0: copy(0,0,nb0)
            if has1: wait_share(1,0,phase[1],(c,i0+1))
            if qk0:
                for pn in SHARE[(0,0)]: wait(0,pn,phase[0]^1,nb0)
            if fill1: copy(1,0,nb1)
            # wg1
            wait_share(0,1,phase[0],(c,i0))
            if fill1: copy(1,1,nb1)
            if fill0: copy(0,1,nb0)
            if qk0:  # wg0's second issue_qk (order vs wg1's fill modeled after it)
                for pn in SHARE[(0,1)]: wait(0,pn,phase[0]^1,nb0)
            if qk1:
                for pn in SHARE[(1,1)]+SHARE[(1,0)]: wait(1,pn,phase[1]^1,nb1)
            phase[0]^=1
            if has1: phase[1]^=1
            i0+=2
        while i0+3<n: pair(True,True,True)
        if i0+2<n: pair(True,False,True)
        if i0+1<n: pair(False,False,True)
        else: pair(False,False,False)
    # Every block landed once, on all nine panels of its stage (block j
    # of a piece goes to stage j % 2): a block filled twice or never
    # would shift every later parity.
    for s in (0, 1):
        for pn in range(9):
            f = fills[(s, pn)]
            assert len(set(f)) == len(f), ("block filled twice", s, pn)
            assert set(f) == {(c, j) for c in range(P) for j in range(pieces[c]) if j % 2 == s}, ("fills", s, pn)
random.seed(1)
for trial in range(20000):
    L=random.randint(1,8)
    pieces=[random.choice([1,1,2,3,4,5,6,7,9]) for _ in range(L)]
    run(pieces)
print("panel barriers: every wait's parity matches the fill that carries its block")
