package server

import (
	"log/slog"
	"time"

	"github.com/hashicorp/raft"
)

// slowDiskWrite is how long a write to a replica's raft log or stable state
// may take before the replica warns about it (etcd warns about a slow apply
// at the same 100ms).
const slowDiskWrite = 100 * time.Millisecond

// raftStore is what a replica keeps on disk for raft: its log (in the node
// log, or in its own bbolt file) and its stable state (term and vote, in
// its own bbolt file).
type raftStore interface {
	raft.LogStore
	raft.StableStore
}

// slowDiskStore warns, on the replica's logger, about each write to the
// store it wraps that takes longer than slow. Every write is synced to
// disk, and raft waits for it: a leader before it replicates an
// entry, a follower before it acknowledges one. So a disk that stalls
// stalls the shard, and these warnings are where the tail of a write's
// latency shows up.
type slowDiskStore struct {
	raftStore
	log  *slog.Logger
	slow time.Duration
}

func (s *slowDiskStore) warnIfSlow(start time.Time, what string, args ...any) {
	if took := time.Since(start); took > s.slow {
		s.log.Warn("slow disk: "+what, append([]any{"took", took}, args...)...)
	}
}

// StoreLog appends one entry to the log.
func (s *slowDiskStore) StoreLog(l *raft.Log) error {
	return s.StoreLogs([]*raft.Log{l})
}

// StoreLogs appends entries to the log.
func (s *slowDiskStore) StoreLogs(logs []*raft.Log) error {
	start := time.Now()
	err := s.raftStore.StoreLogs(logs)
	s.warnIfSlow(start, "writing raft log entries", "entries", len(logs))
	return err
}

// DeleteRange removes the entries min to max from the log: raft compacts
// its log after a snapshot, and a follower drops entries that conflict
// with its leader's.
func (s *slowDiskStore) DeleteRange(min, max uint64) error {
	start := time.Now()
	err := s.raftStore.DeleteRange(min, max)
	s.warnIfSlow(start, "deleting raft log entries", "from", min, "to", max)
	return err
}

// Set writes a key of the stable state.
func (s *slowDiskStore) Set(key, val []byte) error {
	start := time.Now()
	err := s.raftStore.Set(key, val)
	s.warnIfSlow(start, "writing raft state", "key", string(key))
	return err
}

// SetUint64 writes a key of the stable state.
func (s *slowDiskStore) SetUint64(key []byte, val uint64) error {
	start := time.Now()
	err := s.raftStore.SetUint64(key, val)
	s.warnIfSlow(start, "writing raft state", "key", string(key))
	return err
}
