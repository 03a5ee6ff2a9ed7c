package shard

import (
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/cespare/xxhash/v2"
)

// SlotCount is the fixed number of slots that keys hash onto. Shards own
// ranges of slots, so the key → slot function never changes while the slot →
// shard assignment may.
const SlotCount = 4096

// ID names a shard. Shard IDs are small integers, unique within a cluster.
type ID uint32

// KeySlot returns the slot of key: xxhash64 of its bytes modulo SlotCount.
// The result is the same on every platform and in every version of shoal.
func KeySlot(key string) int {
	return int(xxhash.Sum64String(key) % SlotCount)
}

// Map assigns every slot to a shard and every shard to the nodes that hold
// its replicas. A Map is versioned data: a newer assignment carries a larger
// Version, and nodes and clients exchange Maps to agree on one.
//
// A Map must not be modified once it is in use; build a new one instead.
type Map struct {
	// Version orders maps: a larger version replaces a smaller one.
	Version uint64 `json:"version"`
	// Shards lists every shard with its replicas, sorted by ID.
	Shards []Shard `json:"shards"`
	// Ranges assigns slots to shards. Sorted by Start, the ranges are
	// contiguous and cover [0, SlotCount) exactly.
	Ranges []Range `json:"ranges"`
}

// Shard is one replicated group: its ID and the IDs of the nodes holding its
// replicas.
type Shard struct {
	ID       ID       `json:"id"`
	Replicas []string `json:"replicas"`
}

// Range assigns the slots [Start, End) to Shard.
type Range struct {
	Start int `json:"start"`
	End   int `json:"end"`
	Shard ID  `json:"shard"`
}

// ErrInvalidMap is returned (wrapped) by Validate for a map that does not
// assign every slot to exactly one known shard.
var ErrInvalidMap = errors.New("shard: invalid map")

// NewEvenMap builds a version 1 map of shards shards over nodes. Slots are
// split into equal contiguous ranges (the first SlotCount%shards ranges one
// slot larger), and shard i is replicated on replicas consecutive nodes
// starting at nodes[i % len(nodes)], so leaders and load spread evenly.
func NewEvenMap(nodes []string, shards, replicas int) (*Map, error) {
	switch {
	case len(nodes) == 0:
		return nil, fmt.Errorf("%w: no nodes", ErrInvalidMap)
	case shards < 1 || shards > SlotCount:
		return nil, fmt.Errorf("%w: %d shards, want 1 to %d", ErrInvalidMap, shards, SlotCount)
	case replicas < 1 || replicas > len(nodes):
		return nil, fmt.Errorf("%w: %d replicas on %d nodes", ErrInvalidMap, replicas, len(nodes))
	}
	m := &Map{Version: 1}
	start := 0
	for i := 0; i < shards; i++ {
		size := SlotCount / shards
		if i < SlotCount%shards {
			size++
		}
		s := Shard{ID: ID(i)}
		for j := 0; j < replicas; j++ {
			s.Replicas = append(s.Replicas, nodes[(i+j)%len(nodes)])
		}
		m.Shards = append(m.Shards, s)
		m.Ranges = append(m.Ranges, Range{Start: start, End: start + size, Shard: ID(i)})
		start += size
	}
	return m, m.Validate()
}

// Validate reports whether m is well formed: shards sorted by unique ID, each
// with at least one replica and no node twice, and ranges that cover every
// slot exactly once and name only known shards.
func (m *Map) Validate() error {
	if len(m.Shards) == 0 {
		return fmt.Errorf("%w: no shards", ErrInvalidMap)
	}
	for i, s := range m.Shards {
		if i > 0 && m.Shards[i-1].ID >= s.ID {
			return fmt.Errorf("%w: shards not sorted by unique id at %d", ErrInvalidMap, s.ID)
		}
		if len(s.Replicas) == 0 {
			return fmt.Errorf("%w: shard %d has no replicas", ErrInvalidMap, s.ID)
		}
		seen := make(map[string]bool, len(s.Replicas))
		for _, n := range s.Replicas {
			if n == "" || seen[n] {
				return fmt.Errorf("%w: shard %d lists node %q twice or empty", ErrInvalidMap, s.ID, n)
			}
			seen[n] = true
		}
	}
	next := 0
	for _, r := range m.Ranges {
		if r.Start != next || r.End <= r.Start || r.End > SlotCount {
			return fmt.Errorf("%w: range [%d,%d) does not continue from slot %d", ErrInvalidMap, r.Start, r.End, next)
		}
		if m.Shard(r.Shard) == nil {
			return fmt.Errorf("%w: range [%d,%d) names unknown shard %d", ErrInvalidMap, r.Start, r.End, r.Shard)
		}
		next = r.End
	}
	if next != SlotCount {
		return fmt.Errorf("%w: slots from %d on are unassigned", ErrInvalidMap, next)
	}
	return nil
}

// Clone returns a deep copy of m, which the caller may change.
func (m *Map) Clone() *Map {
	c := &Map{Version: m.Version, Shards: make([]Shard, len(m.Shards)), Ranges: slices.Clone(m.Ranges)}
	for i, s := range m.Shards {
		c.Shards[i] = Shard{ID: s.ID, Replicas: slices.Clone(s.Replicas)}
	}
	return c
}

// ShardOf returns the shard that owns key. m must be valid.
func (m *Map) ShardOf(key string) ID {
	return m.SlotShard(KeySlot(key))
}

// SlotShard returns the shard that owns slot. m must be valid.
func (m *Map) SlotShard(slot int) ID {
	i := sort.Search(len(m.Ranges), func(i int) bool { return m.Ranges[i].End > slot })
	return m.Ranges[i].Shard
}

// Shard returns the shard with the given id, or nil if m has none.
func (m *Map) Shard(id ID) *Shard {
	i := sort.Search(len(m.Shards), func(i int) bool { return m.Shards[i].ID >= id })
	if i < len(m.Shards) && m.Shards[i].ID == id {
		return &m.Shards[i]
	}
	return nil
}

// ShardsOf returns the IDs of the shards that node holds a replica of, in
// ascending order.
func (m *Map) ShardsOf(node string) []ID {
	var ids []ID
	for _, s := range m.Shards {
		for _, n := range s.Replicas {
			if n == node {
				ids = append(ids, s.ID)
				break
			}
		}
	}
	return ids
}

// Owns reports whether shard id owns every slot of [start, end).
func (m *Map) Owns(id ID, start, end int) bool {
	for _, r := range m.Ranges {
		if r.End <= start || r.Start >= end {
			continue
		}
		if r.Shard != id {
			return false
		}
	}
	return start < end
}

// Assign returns m's ranges with the slots [start, end) assigned to shard
// id, adjacent ranges of one shard merged; m's own are not changed.
func (m *Map) Assign(start, end int, id ID) []Range {
	var out []Range
	add := func(from, to int, s ID) {
		if to <= from {
			return
		}
		if n := len(out); n > 0 && out[n-1].Shard == s && out[n-1].End == from {
			out[n-1].End = to
			return
		}
		out = append(out, Range{Start: from, End: to, Shard: s})
	}
	for _, r := range m.Ranges {
		// The part before the slots, the part among them, the part after.
		add(r.Start, min(r.End, start), r.Shard)
		add(max(r.Start, start), min(r.End, end), id)
		add(max(r.Start, end), r.End, r.Shard)
	}
	return out
}

// RangesOf returns the ranges shard id owns, in slot order.
func (m *Map) RangesOf(id ID) []Range {
	var out []Range
	for _, r := range m.Ranges {
		if r.Shard == id {
			out = append(out, r)
		}
	}
	return out
}
