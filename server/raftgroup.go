package server

import (
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/shoal-kv/shoal/server/nodelog"
	"github.com/shoal-kv/shoal/shard"
)

// raftGroup is this node's raft instance of one group, a shard's or the
// control group's, with what it runs on: its stores and its transport.
type raftGroup struct {
	// self is this node's id.
	self raft.ServerID
	raft *raft.Raft
	// logs is the log store raft uses, through its cache of recent entries.
	logs  raft.LogStore
	snaps *raft.FileSnapshotStore
	trans *raft.NetworkTransport
	sl    *streamLayer
	store *raftboltdb.BoltStore
	// configs tracks the latest configuration the state machine applied.
	configs *configIndex
	// closing closes when the replica starts closing; every wait on a
	// raft future ends then (see awaitFuture).
	closing chan struct{}
}

// groupConfig is what openGroup needs of a group.
type groupConfig struct {
	id shard.ID
	// dir holds the group's raft state and snapshots, and its log unless
	// nodeLog holds it.
	dir  string
	node string
	// bootstrap, if not nil, is the configuration a group with no state
	// here starts with: node ids of its voters to their raft addresses.
	bootstrap map[string]string
	// timing is the group's raft timing, alike on all its replicas.
	timing RaftTiming
	// layer carries the group's raft traffic over the node listener.
	layer *streamLayer
	log   *slog.Logger
	// nodeLog, if not nil, holds the group's raft log; if nil, the log is
	// in the replica's own bbolt file with its raft state.
	nodeLog *nodelog.Store
	// logStore is the spec's log_store as written: if empty, a replica
	// whose log is in its bbolt file keeps it there (see replicaLog).
	logStore string
}

// openGroup opens (or creates) a group's stores in cfg.dir and starts its
// raft instance over sm. It owns cfg.layer: on failure it closes it.
func openGroup(cfg groupConfig, sm raft.FSM) (*raftGroup, error) {
	id := cfg.id
	fail := func(err error) (*raftGroup, error) {
		cfg.layer.Close()
		return nil, err
	}
	if err := os.MkdirAll(cfg.dir, 0o755); err != nil {
		return fail(fmt.Errorf("server: %s: %w", groupName(id), err))
	}
	hlog := newRaftLogger(cfg.log, "raft."+replicaDir(id), hclog.Info)
	store, err := openBolt(id, cfg.dir)
	if err != nil {
		return fail(err)
	}
	closeStore := true
	defer func() {
		if closeStore {
			store.Close()
		}
	}()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.dir, snapshotsRetained, hlog)
	if err != nil {
		return fail(fmt.Errorf("server: %s: %w", groupName(id), err))
	}
	log := cfg.log.With("shard", id)
	var entries raft.LogStore = store
	if cfg.nodeLog != nil {
		if entries, err = replicaLog(id, cfg.dir, cfg.nodeLog, store, cfg.logStore, log); err != nil {
			return fail(err)
		}
	}
	disk := &slowDiskStore{raftStore: splitStore{entries, store}, log: log, slow: slowDiskWrite}
	logs, err := raft.NewLogCache(logCacheSize, disk)
	if err != nil {
		return fail(fmt.Errorf("server: %s: %w", groupName(id), err))
	}

	t := cfg.timing.withDefaults()
	rcfg := raft.DefaultConfig()
	rcfg.LocalID = raft.ServerID(cfg.node)
	rcfg.Logger = hlog
	rcfg.HeartbeatTimeout = time.Duration(t.HeartbeatTimeout)
	rcfg.ElectionTimeout = time.Duration(t.ElectionTimeout)
	rcfg.LeaderLeaseTimeout = time.Duration(t.LeaderLeaseTimeout)
	rcfg.CommitTimeout = time.Duration(t.CommitTimeout)
	rcfg.SnapshotThreshold = t.SnapshotThreshold
	rcfg.BatchApplyCh = true
	// Fewer entries per append than raft's 64 bound a raft message
	// tighter (maxRaftRequestSize); ours hold up to entryMaxBytes each.
	rcfg.MaxAppendEntries = maxRaftEntries
	if err := raft.ValidateConfig(rcfg); err != nil {
		return fail(fmt.Errorf("server: %s: %w", groupName(id), err))
	}

	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  cfg.layer,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  hlog,
	})
	existing, err := raft.HasExistingState(logs, disk, snaps)
	if err != nil {
		trans.Close()
		return fail(fmt.Errorf("server: %s: %w", groupName(id), err))
	}
	if !existing && cfg.bootstrap != nil {
		// Every first voter bootstraps with the same configuration, which
		// raft allows; whichever wins the first election leads. In the
		// same order too, so that the first entry is alike on every
		// replica, byte for byte.
		var conf raft.Configuration
		for _, nid := range slices.Sorted(maps.Keys(cfg.bootstrap)) {
			conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(nid), Address: raft.ServerAddress(cfg.bootstrap[nid])})
		}
		if err := raft.BootstrapCluster(rcfg, logs, disk, snaps, trans, conf); err != nil {
			trans.Close()
			return fail(fmt.Errorf("server: %s: bootstrap: %w", groupName(id), err))
		}
	}
	configs := new(configIndex)
	r, err := raft.NewRaft(rcfg, withConfigIndex(sm, configs), logs, disk, snaps, trans)
	if err != nil {
		trans.Close()
		return fail(fmt.Errorf("server: %s: %w", groupName(id), err))
	}
	closeStore = false
	return &raftGroup{self: rcfg.LocalID, raft: r, logs: logs, snaps: snaps, trans: trans, sl: cfg.layer, store: store,
		configs: configs, closing: make(chan struct{})}, nil
}

// splitStore is a raftStore whose log and stable state are kept apart.
type splitStore struct {
	raft.LogStore
	raft.StableStore
}

// close releases the transport and the stores of a group whose raft has
// shut down (with err), once wait has waited for whatever still uses them.
func (g *raftGroup) close(err error, wait func()) error {
	g.trans.Close()
	g.trans.CloseStreams()
	g.sl.drain()
	wait()
	if cerr := g.store.Close(); err == nil {
		err = cerr
	}
	return err
}

// groupName names a group in errors and logs.
func groupName(id shard.ID) string {
	if id == shard.ControlGroup {
		return "control group"
	}
	return fmt.Sprintf("shard %d", id)
}

// otherVoters returns the voters of the group's latest configuration but
// this node, in the configuration's order.
func (g *raftGroup) otherVoters() []string {
	var ids []string
	for _, s := range g.raft.GetConfiguration().Configuration().Servers {
		if s.Suffrage == raft.Voter && s.ID != g.self {
			ids = append(ids, string(s.ID))
		}
	}
	return ids
}
