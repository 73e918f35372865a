// Package kvcache manages the paged latent KV cache of a worker: which pages
// each sequence owns, how many tokens each layer of it holds, and whether a
// new sequence may be admitted.
//
// Admission reserves up front. A sequence declares its maximum length when
// it is created and is admitted only if that many pages (in every layer) are
// not already promised to other sequences. Physical pages are taken from the
// free list lazily, when a layer first writes into them, but the promise
// means that take can never fail: a running sequence is never starved,
// preempted or corrupted by a newcomer, and usage (what the pool reports and
// the operator schedules by) is the reserved tokens. vLLM instead grows
// sequences page by page and preempts when it runs out; that gives higher
// utilisation but lets a running request be evicted, which this worker's
// callers, who bring their own KV rows, could not recover from.
//
// One block table per sequence is shared by all layers: token t of any layer
// lives in slot table[t/64]*64 + t%64 of that layer. Page take and give back
// are O(1) pushes and pops on a stack of free pages.
package kvcache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/mla-operator/mla-operator/worker/engine"
)

// SeqID names a sequence; IDs are never reused within a pool's life.
type SeqID uint64

// ErrNotFound means the sequence does not exist (never created or freed).
var ErrNotFound = errors.New("sequence not found")

// ErrNotAdmitting means the pool stopped admitting (the worker is draining).
var ErrNotAdmitting = errors.New("worker is draining and admits no new sequences")

// TooLongError is a sequence declared longer than the context limit, or not
// positive.
type TooLongError struct {
	Tokens, Limit int64
}

func (e *TooLongError) Error() string {
	if e.Tokens < 1 {
		return fmt.Sprintf("maximum length must be at least 1 token, got %d", e.Tokens)
	}
	return fmt.Sprintf("maximum length %d tokens exceeds this worker's context limit of %d tokens", e.Tokens, e.Limit)
}

// FullError is a sequence that fits the context limit but not the pages
// still unreserved; it may fit once others are freed.
type FullError struct {
	Tokens                   int64
	NeededPages, FreePages   int
	CapacityTokens, Reserved int64
}

func (e *FullError) Error() string {
	return fmt.Sprintf("KV cache full: a sequence of %d tokens needs %d pages, %d of %d tokens' pages are free",
		e.Tokens, e.NeededPages, int64(e.FreePages)*engine.PageSize, e.CapacityTokens)
}

// OverflowError is an append past a sequence's declared maximum length.
type OverflowError struct {
	ID             SeqID
	Layer          int
	Length, Adding int
	MaxTokens      int64
}

func (e *OverflowError) Error() string {
	return fmt.Sprintf("sequence %d layer %d holds %d tokens; %d more exceed its declared maximum of %d",
		e.ID, e.Layer, e.Length, e.Adding, e.MaxTokens)
}

// Pool is a paged latent KV cache and its sequences. It is safe for
// concurrent use.
type Pool struct {
	cache        engine.Cache
	layers       int
	pages        int
	contextLimit int64

	mu        sync.Mutex
	free      []int32 // stack of pages no sequence holds
	reserved  int     // pages promised to sequences (live ones and freed ones still pinned)
	seqs      map[SeqID]*sequence
	lastID    SeqID
	admitting bool
	room      chan struct{} // closed and replaced whenever reserved pages are given back

	waiting atomic.Int64 // creations blocked waiting for room
	refused atomic.Int64 // creations refused for lack of room, ever
}

type sequence struct {
	id            SeqID
	maxTokens     int64
	reservedPages int

	// pins and freed are guarded by Pool.mu: a pinned sequence's pages are
	// not given back until the last operation on it ends.
	pins  int
	freed bool

	mu    sync.Mutex
	table []int32 // pages taken so far, in token order
	lens  []int32 // tokens held, per layer
}

// New makes a pool over cache, admitting sequences up to contextLimit
// tokens (at most the cache's capacity).
func New(cache engine.Cache, contextLimit int64) (*Pool, error) {
	shape := cache.Shape()
	capacity := int64(shape.Pages) * engine.PageSize
	if contextLimit < 1 || contextLimit > capacity {
		return nil, fmt.Errorf("context limit %d must be in [1, %d], the pool's capacity", contextLimit, capacity)
	}
	p := &Pool{
		cache: cache, layers: shape.Layers, pages: shape.Pages, contextLimit: contextLimit,
		free: make([]int32, shape.Pages), seqs: map[SeqID]*sequence{}, admitting: true,
		room: make(chan struct{}),
	}
	// Low pages on top, so a fresh pool fills from the start of the mapping.
	for i := range p.free {
		p.free[i] = int32(shape.Pages - 1 - i)
	}
	return p, nil
}

func pagesFor(tokens int64) int { return int((tokens + engine.PageSize - 1) / engine.PageSize) }

// Create admits a sequence of at most maxTokens tokens, or says why not:
// *TooLongError, *FullError or ErrNotAdmitting.
func (p *Pool) Create(maxTokens int64) (SeqID, error) {
	id, _, err := p.tryCreate(maxTokens)
	if _, full := err.(*FullError); full {
		p.refused.Add(1)
	}
	return id, err
}

// CreateWait is Create that, when the pool is full, waits for room until ctx
// ends. Sequences that can never fit fail at once.
func (p *Pool) CreateWait(ctx context.Context, maxTokens int64) (SeqID, error) {
	waited := false
	defer func() {
		if waited {
			p.waiting.Add(-1)
		}
	}()
	for {
		id, room, err := p.tryCreate(maxTokens)
		if _, full := err.(*FullError); !full {
			return id, err
		}
		if !waited {
			waited = true
			p.waiting.Add(1)
		}
		select {
		case <-room:
		case <-ctx.Done():
			p.refused.Add(1)
			return 0, err
		}
	}
}

func (p *Pool) tryCreate(maxTokens int64) (SeqID, <-chan struct{}, error) {
	if maxTokens < 1 || maxTokens > p.contextLimit {
		return 0, nil, &TooLongError{Tokens: maxTokens, Limit: p.contextLimit}
	}
	need := pagesFor(maxTokens)
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.admitting {
		return 0, nil, ErrNotAdmitting
	}
	if p.reserved+need > p.pages {
		return 0, p.room, &FullError{Tokens: maxTokens, NeededPages: need, FreePages: p.pages - p.reserved,
			CapacityTokens: int64(p.pages) * engine.PageSize, Reserved: int64(p.reserved) * engine.PageSize}
	}
	p.reserved += need
	p.lastID++
	s := &sequence{id: p.lastID, maxTokens: maxTokens, reservedPages: need, lens: make([]int32, p.layers)}
	p.seqs[s.id] = s
	return s.id, nil, nil
}

// Free ends a sequence. Its pages return to the pool once operations
// already running on it finish.
func (p *Pool) Free(id SeqID) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.seqs[id]
	if !ok {
		return fmt.Errorf("sequence %d: %w", id, ErrNotFound)
	}
	delete(p.seqs, id)
	s.freed = true
	if s.pins == 0 {
		p.releaseLocked(s)
	}
	return nil
}

func (p *Pool) releaseLocked(s *sequence) {
	p.free = append(p.free, s.table...)
	s.table = nil
	p.reserved -= s.reservedPages
	close(p.room)
	p.room = make(chan struct{})
}

// pin looks up ids and keeps their pages from being given back until unpin.
func (p *Pool) pin(ids ...SeqID) ([]*sequence, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	seqs := make([]*sequence, len(ids))
	for i, id := range ids {
		s, ok := p.seqs[id]
		if !ok {
			for _, done := range seqs[:i] {
				p.unpinLocked(done)
			}
			return nil, fmt.Errorf("sequence %d: %w", id, ErrNotFound)
		}
		s.pins++
		seqs[i] = s
	}
	return seqs, nil
}

func (p *Pool) unpin(seqs ...*sequence) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range seqs {
		p.unpinLocked(s)
	}
}

func (p *Pool) unpinLocked(s *sequence) {
	s.pins--
	if s.pins == 0 && s.freed {
		p.releaseLocked(s)
	}
}

// takePage pops a free page. Reservation guarantees one is there for any
// sequence still under its reserved pages.
func (p *Pool) takePage() int32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.free) - 1
	page := p.free[n]
	p.free = p.free[:n]
	return page
}

// Append stores rows (bf16 bits, a multiple of engine.RowDim) after the
// tokens layer already holds, and returns the layer's new length.
func (p *Pool) Append(id SeqID, layer int, rows []uint16) (int, error) {
	if layer < 0 || layer >= p.layers {
		return 0, fmt.Errorf("layer %d out of range [0, %d)", layer, p.layers)
	}
	if len(rows) == 0 || len(rows)%engine.RowDim != 0 {
		return 0, fmt.Errorf("rows hold %d values, want a positive multiple of %d", len(rows), engine.RowDim)
	}
	seqs, err := p.pin(id)
	if err != nil {
		return 0, err
	}
	defer p.unpin(seqs...)
	s := seqs[0]
	adding := len(rows) / engine.RowDim

	s.mu.Lock()
	defer s.mu.Unlock()
	start := int(s.lens[layer])
	if int64(start+adding) > s.maxTokens {
		return start, &OverflowError{ID: id, Layer: layer, Length: start, Adding: adding, MaxTokens: s.maxTokens}
	}
	end := start + adding
	for len(s.table) < pagesFor(int64(end)) {
		s.table = append(s.table, p.takePage())
	}
	slots := make([]int32, adding)
	for i := range slots {
		t := start + i
		slots[i] = s.table[t/engine.PageSize]*engine.PageSize + int32(t%engine.PageSize)
	}
	if err := p.cache.WriteRows(layer, slots, rows); err != nil {
		return start, fmt.Errorf("sequence %d layer %d: %w", id, layer, err)
	}
	s.lens[layer] = int32(end)
	return end, nil
}

// Read returns tokens [from, from+n) of a sequence's layer, for checks and
// migration.
func (p *Pool) Read(id SeqID, layer, from, n int) ([]uint16, error) {
	if layer < 0 || layer >= p.layers {
		return nil, fmt.Errorf("layer %d out of range [0, %d)", layer, p.layers)
	}
	seqs, err := p.pin(id)
	if err != nil {
		return nil, err
	}
	defer p.unpin(seqs...)
	s := seqs[0]
	s.mu.Lock()
	length := int(s.lens[layer])
	if from < 0 || n < 0 || from+n > length {
		s.mu.Unlock()
		return nil, fmt.Errorf("sequence %d layer %d holds %d tokens; cannot read [%d, %d)", id, layer, length, from, from+n)
	}
	slots := make([]int32, n)
	for i := range slots {
		t := from + i
		slots[i] = s.table[t/engine.PageSize]*engine.PageSize + int32(t%engine.PageSize)
	}
	s.mu.Unlock()
	rows := make([]uint16, n*engine.RowDim)
	if err := p.cache.ReadRows(layer, slots, rows); err != nil {
		return nil, fmt.Errorf("sequence %d layer %d: %w", id, layer, err)
	}
	return rows, nil
}

// SequenceInfo describes one sequence.
type SequenceInfo struct {
	ID             SeqID
	MaxTokens      int64
	ReservedTokens int64
	// Lengths is the tokens each layer holds.
	Lengths []int32
}

// Info describes a sequence.
func (p *Pool) Info(id SeqID) (SequenceInfo, error) {
	seqs, err := p.pin(id)
	if err != nil {
		return SequenceInfo{}, err
	}
	defer p.unpin(seqs...)
	s := seqs[0]
	s.mu.Lock()
	defer s.mu.Unlock()
	return SequenceInfo{ID: id, MaxTokens: s.maxTokens, ReservedTokens: int64(s.reservedPages) * engine.PageSize,
		Lengths: append([]int32(nil), s.lens...)}, nil
}

// DecodeStep is one batched decode of one layer across sequences.
type DecodeStep struct {
	Layer int
	IDs   []SeqID // one per batch entry; a sequence may appear more than once
	SQ    int
	Heads int
	Scale float32
	Q     []uint16  // [len(IDs), SQ, Heads, RowDim]
	Out   []uint16  // [len(IDs), SQ, Heads, LatentDim]
	LSE   []float32 // [len(IDs), Heads, SQ]
}

// Decode runs step on e over the tokens each sequence's layer holds now;
// the queries are its last SQ tokens. Sequences freed meanwhile keep their
// pages until the step ends.
func (p *Pool) Decode(ctx context.Context, e engine.Engine, step *DecodeStep) error {
	if step.Layer < 0 || step.Layer >= p.layers {
		return fmt.Errorf("layer %d out of range [0, %d)", step.Layer, p.layers)
	}
	if len(step.IDs) == 0 {
		return fmt.Errorf("decode needs at least one sequence")
	}
	seqs, err := p.pin(step.IDs...)
	if err != nil {
		return err
	}
	defer p.unpin(seqs...)

	lens := make([]int32, len(seqs))
	tables := make([][]int32, len(seqs))
	maxPages := 1
	for i, s := range seqs {
		s.mu.Lock()
		n := s.lens[step.Layer]
		tables[i] = s.table[:pagesFor(int64(n))]
		s.mu.Unlock()
		if int(n) < step.SQ {
			return fmt.Errorf("sequence %d layer %d holds %d tokens, fewer than the %d queried", s.id, step.Layer, n, step.SQ)
		}
		lens[i] = n
		maxPages = max(maxPages, len(tables[i]))
	}
	table := make([]int32, len(seqs)*maxPages)
	for i, t := range tables {
		copy(table[i*maxPages:], t)
	}
	req := &engine.DecodeRequest{
		Layer: step.Layer, Batch: len(seqs), SQ: step.SQ, Heads: step.Heads,
		Q: step.Q, BlockTable: table, MaxPages: maxPages, SeqLens: lens,
		Scale: step.Scale, Out: step.Out, LSE: step.LSE,
	}
	return e.Decode(ctx, p.cache, req)
}

// StopAdmitting makes every later Create fail with ErrNotAdmitting and
// wakes creations waiting for room so they fail too.
func (p *Pool) StopAdmitting() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.admitting {
		p.admitting = false
		close(p.room)
		p.room = make(chan struct{})
	}
}

// Stats is the pool's accounting at one instant.
type Stats struct {
	Layers int
	// Pages is the pages per layer; CapacityTokens = Pages x 64.
	Pages          int
	CapacityTokens int64
	// ContextLimit is the longest sequence admitted.
	ContextLimit int64
	// ReservedPages are promised to sequences; UsedTokens = ReservedPages x 64.
	ReservedPages int
	UsedTokens    int64
	// TakenPages hold data (taken from the free list); at most ReservedPages.
	TakenPages int
	Active     int
	Waiting    int64
	// Refused counts creations refused for lack of room, ever.
	Refused   int64
	Admitting bool
}

// Stats reports the pool's accounting.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{
		Layers: p.layers, Pages: p.pages, CapacityTokens: int64(p.pages) * engine.PageSize,
		ContextLimit:  p.contextLimit,
		ReservedPages: p.reserved, UsedTokens: int64(p.reserved) * engine.PageSize,
		TakenPages: p.pages - len(p.free), Active: len(p.seqs),
		Waiting: p.waiting.Load(), Refused: p.refused.Load(), Admitting: p.admitting,
	}
}
