package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/shoal-kv/shoal/shard"
)

// Result is what FSM.Apply returns for an entry (raft hands it to the
// proposer through ApplyFuture.Response).
type Result struct {
	// Cluster is the state after the entry: the new one if it changed
	// the state, the unchanged one if it was a no-op or refused; nil
	// before init.
	Cluster *shard.Cluster
	// Err is why the entry was refused (ErrRejected or
	// ErrUnknownCommand, wrapped), or nil.
	Err error
}

// FSM is the control group's raft.FSM. Raft calls Apply, Snapshot and
// Restore from one goroutine; Current, Wait and Applied may be called
// from any.
//
// The state is an immutable *shard.Cluster, replaced whole on each
// change, so readers share it without copying and must not modify it.
type FSM struct {
	state   atomic.Pointer[shard.Cluster]
	applied atomic.Uint64

	mu sync.Mutex
	// changed is closed when the state is replaced, and a new channel
	// takes its place. Invariant: changed is the channel of the state
	// in state at the time mu is held.
	changed chan struct{}
}

// NewFSM returns an FSM with no state (before init).
func NewFSM() *FSM {
	return &FSM{changed: make(chan struct{})}
}

// Current returns the metadata, or nil before init.
func (f *FSM) Current() *shard.Cluster {
	return f.state.Load()
}

// Applied returns the index of the last log entry applied (or restored
// from a snapshot).
func (f *FSM) Applied() uint64 {
	return f.applied.Load()
}

// Wait returns the metadata as soon as its Version is greater than after
// (at once if it is already), or ctx's error.
func (f *FSM) Wait(ctx context.Context, after uint64) (*shard.Cluster, error) {
	for {
		f.mu.Lock()
		c, changed := f.state.Load(), f.changed
		f.mu.Unlock()
		if c != nil && c.Version > after {
			return c, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// install makes c the state and wakes the waiters.
func (f *FSM) install(c *shard.Cluster) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state.Store(c)
	close(f.changed)
	f.changed = make(chan struct{})
}

// Apply applies a log entry holding an encoded Command and returns a
// Result. An entry that does not decode is refused like any other
// command, so a bad entry cannot stop the group.
func (f *FSM) Apply(l *raft.Log) any {
	// Applied moves before the state does, so a reader woken by Wait
	// finds Applied at least the index of the entry that woke it.
	f.applied.Store(l.Index)
	cur := f.state.Load()
	cmd, err := DecodeCommand(l.Data)
	if err != nil {
		return Result{Cluster: cur, Err: err}
	}
	next, err := cmd.Apply(cur)
	if err != nil {
		return Result{Cluster: cur, Err: err}
	}
	if next != cur {
		f.install(next)
	}
	return Result{Cluster: next}
}

// snapshotData is a snapshot's JSON: the metadata and the index of the
// last entry applied to it, which Restore cannot learn from raft.
type snapshotData struct {
	Applied uint64         `json:"applied"`
	Cluster *shard.Cluster `json:"cluster"`
}

// Snapshot returns the state as of the last entry applied. Raft calls
// it on the goroutine that applies entries, so the two agree.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{data: snapshotData{Applied: f.applied.Load(), Cluster: f.state.Load()}}, nil
}

// Restore replaces the state with a snapshot's and wakes the waiters. A
// snapshot that does not decode, lacks the metadata (even as null, the
// state before init), or whose metadata does not validate, is an error
// and leaves the state as it was.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	// Snapshots are a few kilobytes of metadata; reading one whole lets
	// Unmarshal refuse anything after the JSON.
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("control: restore: %w", err)
	}
	// Unknown fields are ignored: a newer version's snapshot may carry
	// more, and the fields this one knows keep their meaning.
	var d struct {
		Applied uint64          `json:"applied"`
		Cluster json.RawMessage `json:"cluster"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return fmt.Errorf("control: restore: %w", err)
	}
	if d.Cluster == nil {
		return errors.New("control: restore: the snapshot holds no metadata")
	}
	var c *shard.Cluster
	if err := json.Unmarshal(d.Cluster, &c); err != nil {
		return fmt.Errorf("control: restore: %w", err)
	}
	if c != nil {
		if err := c.Validate(); err != nil {
			return fmt.Errorf("control: restore: %w", err)
		}
	}
	f.applied.Store(d.Applied)
	f.install(c)
	return nil
}

// snapshot is an FSMSnapshot of immutable state: it holds the pointer,
// so taking it costs nothing and Persist may run beside Apply.
type snapshot struct {
	data snapshotData
}

// Persist writes the snapshot as JSON to sink.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	b, err := json.Marshal(s.data)
	if err == nil {
		_, err = sink.Write(b)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("control: persist snapshot: %w", err), sink.Cancel())
	}
	return sink.Close()
}

// Release does nothing: the snapshot holds only immutable state.
func (s *snapshot) Release() {}
