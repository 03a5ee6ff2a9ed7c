package shard

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/hashicorp/raft"
	"github.com/jackpal/bencode-go"
)

// snapshotFormat is the version of the snapshot stream. Restore refuses any
// other.
const snapshotFormat = 1

// ErrBadSnapshot is returned (wrapped) by Restore for a stream it cannot read.
var ErrBadSnapshot = errors.New("shard: bad snapshot")

// The snapshot stream is a header followed by Keys key records and Sessions
// session records, each a bencoded dict. Keys and clients are sorted, so
// replicas with the same state write the same bytes.
type snapshotHeader struct {
	Format     int    `bencode:"f"`
	Applied    uint64 `bencode:"i"`
	Revision   uint64 `bencode:"r"`
	Clock      int64  `bencode:"t"`
	LastExpiry int64  `bencode:"x"`
	Executed   uint64 `bencode:"e"`
	Duplicates uint64 `bencode:"d"`
	Keys       int    `bencode:"k"`
	Sessions   int    `bencode:"s"`
}

type keyRecord struct {
	Key     string `bencode:"k"`
	Value   string `bencode:"v"`
	Version uint64 `bencode:"n"`
}

type sessionRecord struct {
	Client   string         `bencode:"c"`
	Floor    uint64         `bencode:"f"`
	LastSeen int64          `bencode:"t"`
	Results  []resultRecord `bencode:"r"`
}

type resultRecord struct {
	Seq     uint64 `bencode:"q"`
	Status  Status `bencode:"s"`
	Version uint64 `bencode:"v"`
}

// fsmSnapshot is a point-in-time copy of the state, written out while the
// FSM goes on applying.
type fsmSnapshot struct {
	header   snapshotHeader
	kv       map[string]Entry
	sessions sessions
}

// Snapshot captures the state for raft. It copies the maps, so it costs
// time linear in the state; Persist then runs without holding the FSM.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	kv := make(map[string]Entry, len(f.kv))
	for k, e := range f.kv {
		kv[k] = e
	}
	return &fsmSnapshot{
		header: snapshotHeader{
			Format:     snapshotFormat,
			Applied:    f.applied,
			Revision:   f.rev,
			Clock:      f.clock,
			LastExpiry: f.lastExpiry,
			Executed:   f.executed,
			Duplicates: f.duplicates,
			Keys:       len(kv),
			Sessions:   len(f.sessions),
		},
		kv:       kv,
		sessions: f.sessions.clone(),
	}, nil
}

// Persist writes the snapshot to sink and closes it, or cancels it on error.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("shard: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	if err := bencode.Marshal(bw, s.header); err != nil {
		return err
	}
	keys := make([]string, 0, len(s.kv))
	for k := range s.kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		e := s.kv[k]
		if err := bencode.Marshal(bw, keyRecord{Key: k, Value: e.Value, Version: e.Version}); err != nil {
			return err
		}
	}
	clients := make([]string, 0, len(s.sessions))
	for c := range s.sessions {
		clients = append(clients, c)
	}
	sort.Strings(clients)
	for _, c := range clients {
		ss := s.sessions[c]
		rec := sessionRecord{Client: c, Floor: ss.floor, LastSeen: ss.lastSeen}
		for seq, r := range ss.results {
			rec.Results = append(rec.Results, resultRecord{Seq: seq, Status: r.Status, Version: r.Version})
		}
		sort.Slice(rec.Results, func(i, j int) bool { return rec.Results[i].Seq < rec.Results[j].Seq })
		if err := bencode.Marshal(bw, rec); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// Release does nothing: the snapshot holds only copies.
func (s *fsmSnapshot) Release() {}

// Restore replaces the state with a snapshot written by Persist.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	br := bufio.NewReader(rc)
	var h snapshotHeader
	if err := bencode.Unmarshal(br, &h); err != nil {
		return fmt.Errorf("%w: header: %v", ErrBadSnapshot, err)
	}
	if h.Format != snapshotFormat {
		return fmt.Errorf("%w: format %d, want %d", ErrBadSnapshot, h.Format, snapshotFormat)
	}
	if h.Keys < 0 || h.Sessions < 0 {
		return fmt.Errorf("%w: negative counts", ErrBadSnapshot)
	}
	kv := make(map[string]Entry)
	for i := 0; i < h.Keys; i++ {
		var r keyRecord
		if err := bencode.Unmarshal(br, &r); err != nil {
			return fmt.Errorf("%w: key %d of %d: %v", ErrBadSnapshot, i, h.Keys, err)
		}
		kv[r.Key] = Entry{Value: r.Value, Version: r.Version}
	}
	ss := make(sessions)
	for i := 0; i < h.Sessions; i++ {
		var r sessionRecord
		if err := bencode.Unmarshal(br, &r); err != nil {
			return fmt.Errorf("%w: session %d of %d: %v", ErrBadSnapshot, i, h.Sessions, err)
		}
		s := &session{floor: r.Floor, lastSeen: r.LastSeen, results: make(map[uint64]Result, len(r.Results))}
		for _, res := range r.Results {
			s.results[res.Seq] = Result{Status: res.Status, Version: res.Version}
		}
		ss[r.Client] = s
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	f.kv, f.sessions = kv, ss
	f.rev, f.clock, f.lastExpiry = h.Revision, h.Clock, h.LastExpiry
	f.executed, f.duplicates = h.Executed, h.Duplicates
	f.applied = h.Applied
	close(f.appliedCh)
	f.appliedCh = make(chan struct{})
	return nil
}
