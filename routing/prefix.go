package routing

import (
	"hash/maphash"
	"sync"
)

// Defaults of the prefix index (the approximate, tokenizer-free prefix
// tracking of SGLang's and llm-d's routers; see the routing reference).
const (
	// DefaultBlockChars is the block size: 64 characters, about 16
	// tokens, as llm-d's prefix scorer uses.
	DefaultBlockChars = 64
	// DefaultMaxBlocks bounds the blocks hashed per request: the first
	// 16 KiB of prompt text.
	DefaultMaxBlocks = 256
	// DefaultEntriesPerInstance caps each instance's entries: 16 Ki
	// blocks, about 1 MiB of prompt text or 256K tokens, the order of a
	// large GPU's KV cache.
	DefaultEntriesPerInstance = 16384
)

// PrefixIndex remembers, per instance, the hashes of the prompt blocks
// recently routed to it, to guess which engine holds a prompt's prefix in
// its KV cache. Block i's hash covers blocks 0..i (a chained hash), so one
// hash names a whole prefix.
//
// Memory is bounded by construction, for any input: each instance keeps
// at most PerInstance hashes, in two generations of PerInstance/2 (when the
// current one fills, it becomes the previous one and the oldest is
// dropped, an approximate LRU without a list or an eviction thread). It is
// safe for concurrent use; each instance has its own lock, held for a few
// map operations.
type PrefixIndex struct {
	blockChars, maxBlocks, perInstance int

	seed  maphash.Seed
	insts sync.Map // int64 → *instPrefixes
}

// NewPrefixIndex returns an index; zero or negative arguments take the
// defaults.
func NewPrefixIndex(blockChars, maxBlocks, perInstance int) *PrefixIndex {
	if blockChars <= 0 {
		blockChars = DefaultBlockChars
	}
	if maxBlocks <= 0 {
		maxBlocks = DefaultMaxBlocks
	}
	if perInstance < 2 {
		perInstance = DefaultEntriesPerInstance
	}
	return &PrefixIndex{blockChars: blockChars, maxBlocks: maxBlocks, perInstance: perInstance, seed: maphash.MakeSeed()}
}

// Blocks hashes the full blocks of text, at most the index's maximum.
// A trailing partial block is left out: the next turn of a conversation
// extends it, so its hash would never match again.
func (x *PrefixIndex) Blocks(text string) []uint64 {
	n := min(len(text)/x.blockChars, x.maxBlocks)
	if n == 0 {
		return nil
	}
	out := make([]uint64, n)
	var h maphash.Hash
	h.SetSeed(x.seed)
	for i := range n {
		_, _ = h.WriteString(text[i*x.blockChars : (i+1)*x.blockChars])
		out[i] = h.Sum64() // Sum64 does not reset: the hash chains
	}
	return out
}

// Match returns how many leading blocks instance id is believed to hold.
func (x *PrefixIndex) Match(id int64, blocks []uint64) int {
	if len(blocks) == 0 {
		return 0
	}
	v, ok := x.insts.Load(id)
	if !ok {
		return 0
	}
	p := v.(*instPrefixes)
	p.mu.Lock()
	defer p.mu.Unlock()
	// Record stores a prompt's blocks together, so holding block i
	// almost always means holding the blocks before it: binary search
	// for the longest held prefix.
	lo, hi := 0, len(blocks) // blocks[:lo] held; blocks[hi:] not known held
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if p.has(blocks[mid-1]) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// Record notes that a request with these blocks was sent to instance id.
func (x *PrefixIndex) Record(id int64, blocks []uint64) {
	if len(blocks) == 0 {
		return
	}
	v, ok := x.insts.Load(id)
	if !ok {
		v, _ = x.insts.LoadOrStore(id, newInstPrefixes(x.perInstance))
	}
	p := v.(*instPrefixes)
	p.mu.Lock()
	defer p.mu.Unlock()
	// Last block first, so that a generation change in the middle
	// keeps the prefix's first blocks, which every later turn shares.
	for i := len(blocks) - 1; i >= 0; i-- {
		p.add(blocks[i])
	}
}

// Retain drops the entries of every instance for which keep is false (it
// left the pool).
func (x *PrefixIndex) Retain(keep func(id int64) bool) {
	x.insts.Range(func(k, _ any) bool {
		if id := k.(int64); !keep(id) {
			x.insts.Delete(id)
		}
		return true
	})
}

// Entries returns the number of hashes held over all instances, and the
// number of instances with entries.
func (x *PrefixIndex) Entries() (entries, instances int) {
	x.insts.Range(func(_, v any) bool {
		p := v.(*instPrefixes)
		p.mu.Lock()
		entries += len(p.cur) + len(p.prev)
		p.mu.Unlock()
		instances++
		return true
	})
	return entries, instances
}

// instPrefixes is one instance's hashes in two generations.
type instPrefixes struct {
	mu        sync.Mutex
	cur, prev map[uint64]struct{}
	half      int
}

func newInstPrefixes(perInstance int) *instPrefixes {
	half := perInstance / 2
	return &instPrefixes{cur: make(map[uint64]struct{}), half: half}
}

func (p *instPrefixes) has(h uint64) bool {
	if _, ok := p.cur[h]; ok {
		return true
	}
	_, ok := p.prev[h]
	return ok
}

// add puts h in the current generation (a hash seen again moves up from
// the previous one), turning generations over when the current one is
// full, so the total never exceeds 2·half.
func (p *instPrefixes) add(h uint64) {
	if _, ok := p.cur[h]; ok {
		return
	}
	if len(p.cur) >= p.half {
		p.prev, p.cur = p.cur, make(map[uint64]struct{})
	}
	p.cur[h] = struct{}{}
}
