package server

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/shoal-kv/shoal/server/nodelog"
	"github.com/shoal-kv/shoal/shard"
	"go.etcd.io/bbolt"
)

// ErrDataDir is returned (wrapped) by Start when a node's data directory
// does not hold what a replica's own records say it should: its raft log
// was lost or replaced, or its raft state (term and vote) was. Raft could
// not start such a replica safely: it might forget entries it acknowledged,
// or vote twice in a term. Restore the directory, or wipe the node's data
// directory so that it starts empty and catches up from its peers.
var ErrDataDir = errors.New("server: data directory inconsistent")

var (
	// nodeLogKey, in a replica's raft-boltdb file, holds the id of the node
	// log that keeps its log (nodelog.Store.ID), once it keeps it there.
	nodeLogKey = []byte("shoal_node_log")
	// termKey is where hashicorp/raft keeps the current term in its
	// stable store; it writes it before the first entry it appends.
	termKey = []byte("CurrentTerm")
)

// openBolt opens (or creates) the raft-boltdb file of shard id's replica in
// dir. It syncs the directories above a file it creates, so that the new
// file survives a power loss along with whatever is written next.
func openBolt(id shard.ID, dir string) (*raftboltdb.BoltStore, error) {
	path := filepath.Join(dir, boltFile)
	_, statErr := os.Stat(path)
	store, err := raftboltdb.New(raftboltdb.Options{
		Path: path,
		BoltOptions: &bbolt.Options{
			Timeout: boltOpenTimeout,
			// Without this, after log truncation the freelist is rewritten
			// on every commit and latency climbs (Consul #5181, bbolt #401).
			NoFreelistSync: true,
			FreelistType:   bbolt.FreelistMapType,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("server: shard %d: opening raft state: %w", id, err)
	}
	if !errors.Is(statErr, os.ErrNotExist) {
		return store, nil
	}
	if err := errors.Join(syncDir(dir), syncDir(filepath.Dir(dir))); err != nil {
		store.Close()
		return nil, fmt.Errorf("server: shard %d: %w", id, err)
	}
	return store, nil
}

// syncDir makes the entries of directory dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// logPlace is where a replica's raft log is kept, as placeLog decides.
type logPlace int

const (
	inBolt    logPlace = iota // the replica's raft-boltdb file
	inNodeLog                 // the node log, whose id the replica has noted
	toNote                    // the node log, whose id the replica must note
)

// placeLog decides, from the replica's raft-boltdb file and the node log,
// where the log of shard id's replica in dir is, and checks it is whole.
// named is the spec's log_store as written.
//
// If the bbolt file holds entries, the log is kept there (the spec's
// log_store was "bolt", or the replica was made before the node log): if
// the spec names the node log, the node refuses to start, rather than
// ignore those entries and start the replica from its last snapshot; if it
// names no store, the replica keeps its log where it is.
//
// Otherwise the log is in the node log, whose id the replica notes in its
// bbolt file. It does not start with another node log (the node's was lost
// or made anew), nor with raft state that lost its term while the node log
// holds entries or snapshots exist (its bbolt file was lost).
func placeLog(id shard.ID, dir string, nodeLog *nodelog.Store, bolt *raftboltdb.BoltStore, named string) (logPlace, error) {
	last, err := bolt.LastIndex()
	if err != nil {
		return 0, fmt.Errorf("server: shard %d: %w", id, err)
	}
	switch {
	case last > 0 && named == LogStoreNode:
		return 0, fmt.Errorf("%w: the spec keeps a node log (log_store %q), but shard %d's log is in its own file (log_store %q)",
			ErrInvalidSpec, LogStoreNode, id, LogStoreBolt)
	case last > 0:
		return inBolt, nil
	}
	noted, err := bolt.Get(nodeLogKey)
	if err != nil && !errors.Is(err, raftboltdb.ErrKeyNotFound) {
		return 0, fmt.Errorf("server: shard %d: %w", id, err)
	}
	if len(noted) > 0 {
		if string(noted) != nodeLog.ID() {
			return 0, fmt.Errorf("%w: shard %d's log was in node log %s, but the node log here is %s: it was lost or replaced",
				ErrDataDir, id, noted, nodeLog.ID())
		}
		return inNodeLog, nil
	}
	term, err := bolt.GetUint64(termKey)
	if err != nil && !errors.Is(err, raftboltdb.ErrKeyNotFound) {
		return 0, fmt.Errorf("server: shard %d: %w", id, err)
	}
	l, err := nodeLog.Group(uint64(id))
	if err != nil {
		return 0, fmt.Errorf("server: shard %d: %w", id, err)
	}
	entries, _ := l.LastIndex()
	snaps, _ := os.ReadDir(filepath.Join(dir, "snapshots"))
	if term == 0 && (entries > 0 || len(snaps) > 0) {
		return 0, fmt.Errorf("%w: shard %d has a raft log or snapshots, but its raft state (%s) has no term: it was lost or replaced",
			ErrDataDir, id, boltFile)
	}
	// A new replica, or one that kept its log in the node log before
	// replicas noted it (its term is set).
	return toNote, nil
}

// replicaLog returns the log store of shard id's replica in dir, as
// placeLog decides, noting the node log in the replica's bbolt file first if
// it must.
func replicaLog(id shard.ID, dir string, nodeLog *nodelog.Store, bolt *raftboltdb.BoltStore, named string, log *slog.Logger) (raft.LogStore, error) {
	place, err := placeLog(id, dir, nodeLog, bolt, named)
	switch {
	case err != nil:
		return nil, err
	case place == inBolt:
		log.Info("the replica's raft log stays in its own file, where it is (log_store unset)")
		return bolt, nil
	case place == toNote:
		if err := bolt.Set(nodeLogKey, []byte(nodeLog.ID())); err != nil {
			return nil, fmt.Errorf("server: shard %d: %w", id, err)
		}
	}
	l, err := nodeLog.Group(uint64(id))
	if err != nil {
		return nil, fmt.Errorf("server: shard %d: %w", id, err)
	}
	return l, nil
}

// checkReplicaLogs runs placeLog on each of the node's replicas that has a
// raft-boltdb file in dataDir, before any replica notes the node log: a
// replica that does not start must not leave the others noting a node log
// that is not theirs.
func checkReplicaLogs(dataDir string, shards []shard.ID, nodeLog *nodelog.Store, named string) error {
	for _, id := range shards {
		dir := filepath.Join(dataDir, replicaDir(id))
		if _, err := os.Stat(filepath.Join(dir, boltFile)); errors.Is(err, os.ErrNotExist) {
			continue
		}
		bolt, err := openBolt(id, dir)
		if err != nil {
			return err
		}
		_, err = placeLog(id, dir, nodeLog, bolt, named)
		if cerr := bolt.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}
