package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"net/rpc"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/server/nodelog"
	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/shard/fsm"
	"github.com/shoal-kv/shoal/wire"
)

// Defaults of Config.
const (
	DefaultHeartbeatInterval = 250 * time.Millisecond
	DefaultClientTTL         = 30 * time.Second
	DefaultLoadTimeConstant  = 250 * time.Millisecond
	DefaultRequestTimeout    = 5 * time.Second
	DefaultMaxInFlight       = 4096
	// DefaultMaxLongPolls and DefaultMaxLongPollsPerClient bound the
	// acquires that wait for a job: a worker has one waiting per Acquire
	// running (Worker.Concurrency of them) at each of a few nodes.
	DefaultMaxLongPolls          = 1024
	DefaultMaxLongPollsPerClient = 64
	// DefaultMaxHeartbeatClients bounds the addresses a node heartbeats:
	// at most 1,024 heartbeats each HeartbeatInterval, each at most 1,024
	// bytes but for its shard lists, about 4 MB/s at the defaults.
	DefaultMaxHeartbeatClients = 1024
)

// Config configures a Node.
type Config struct {
	// ID is this node's id in Spec.
	ID string
	// DataDir holds the node's raft log (DataDir/raftlog, unless the spec
	// keeps a log per shard) and one directory per shard with its
	// snapshots and raft state. Starting a node on the same DataDir brings
	// its data back.
	DataDir string
	// Spec describes the cluster.
	Spec *Spec
	// Logger receives the node's logs; each raft group logs through it
	// under its own name. If nil, slog.Default() is used.
	Logger *slog.Logger
	// Transport serves clients. If nil, the node listens on UDP at its
	// client address in Spec; the node owns and closes either.
	Transport wire.Transport
	// Secret holds the cluster's secrets: the node opens only datagrams
	// sealed with one of them, drops every other without a reply, and
	// seals its replies and heartbeats with the first (wire.Seal).
	// Required unless Insecure.
	Secret *wire.Keyring
	// Insecure runs the node without authentication: client datagrams
	// unsealed, and node-to-node traffic plain TCP that anyone reaching
	// the node may speak. For a trusted network only.
	Insecure bool
	// HeartbeatInterval is how often the node heartbeats its recent
	// clients. If zero, DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// ClientTTL is how long a client stays "recent" after its last
	// valid query (one that decoded, with a known op and valid arguments).
	// If zero, DefaultClientTTL.
	ClientTTL time.Duration
	// MaxHeartbeatClients bounds the recent clients, by address: a new
	// one past it takes the place of the one heard from least recently,
	// which gets heartbeats again after its next query. If zero,
	// DefaultMaxHeartbeatClients.
	MaxHeartbeatClients int
	// LoadTimeConstant is the time constant of the load the node reports:
	// the client requests in progress at it, averaged over time with
	// weights that fall by e every LoadTimeConstant. If zero,
	// DefaultLoadTimeConstant.
	LoadTimeConstant time.Duration
	// RequestTimeout bounds the time spent on one request. If zero,
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// MaxInFlight bounds the requests handled at once; past it, requests
	// get CodeUnavailable, except those answered at once from the node's
	// own state (stale gets, pings, topology; a stale get counts while a
	// write holds, or waits for, its shard's state) and long polls, which
	// MaxLongPolls bounds instead. If zero, DefaultMaxInFlight.
	MaxInFlight int
	// MaxLongPolls bounds the long polls handled at once: acquires that
	// may wait for a job (Args.Wait above zero). They have a pool of
	// their own, so that waiting ones never hold the slots of
	// MaxInFlight that other requests need. Past it, or past
	// MaxLongPollsPerClient of one client id, an acquire gets
	// CodeUnavailable at once. If zero, DefaultMaxLongPolls; if
	// MaxLongPollsPerClient is zero, DefaultMaxLongPollsPerClient.
	MaxLongPolls, MaxLongPollsPerClient int
	// LeaderBalanceInterval is how often the node looks whether it leads
	// more than its share of shards, and then hands one shard's
	// leadership to a replica on a node under its share, once that
	// replica has kept up for two looks in a row (see leadership.go). If
	// zero, DefaultLeaderBalanceInterval; if negative, the node never
	// moves leadership but on Shutdown.
	LeaderBalanceInterval time.Duration
	// MoveTargetTimeout is how long the target of a replica move may fail
	// to answer before the control group's leader, if this node, undoes
	// the move (Node.AbortMove does it at once). If zero,
	// DefaultMoveTargetTimeout.
	MoveTargetTimeout time.Duration
	// PeerTLS holds the node's credentials for node-to-node traffic,
	// which runs over mutual TLS: the node accepts only peers with a
	// certificate from the cluster CA naming a node of Spec (see
	// LoadPeerTLS). Start refuses a node without, unless Insecure.
	PeerTLS *PeerTLS
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.ClientTTL <= 0 {
		c.ClientTTL = DefaultClientTTL
	}
	if c.LoadTimeConstant <= 0 {
		c.LoadTimeConstant = DefaultLoadTimeConstant
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.MaxLongPolls <= 0 {
		c.MaxLongPolls = DefaultMaxLongPolls
	}
	if c.MaxLongPollsPerClient <= 0 {
		c.MaxLongPollsPerClient = DefaultMaxLongPollsPerClient
	}
	if c.MaxHeartbeatClients <= 0 {
		c.MaxHeartbeatClients = DefaultMaxHeartbeatClients
	}
	if c.LeaderBalanceInterval == 0 {
		c.LeaderBalanceInterval = DefaultLeaderBalanceInterval
	}
	if c.MoveTargetTimeout <= 0 {
		c.MoveTargetTimeout = DefaultMoveTargetTimeout
	}
}

// Counters counts what a node has seen: its client listener's requests,
// and what its shards' leaders did with the writes reaching them.
type Counters struct {
	// Requests is every query decoded; Malformed every datagram that was
	// not a valid message (oversized ones included); Busy every request
	// refused because MaxInFlight were running; Unauthenticated every
	// datagram dropped because it did not open with the cluster's secret
	// (Config.Secret), was sent outside the replay window, or was a copy
	// of one taken.
	Requests, Malformed, Busy, Unauthenticated uint64
	// LongPollsRefused counts the long polls (acquires that may wait)
	// refused because MaxLongPolls were running, or MaxLongPollsPerClient
	// of the same client id.
	LongPollsRefused uint64
	// HeartbeatClientsEvicted counts the recent clients dropped before
	// their ClientTTL ran out, to make room for new ones past
	// MaxHeartbeatClients.
	HeartbeatClientsEvicted uint64
	// Joined counts the writes, from clients or forwarded by peers,
	// that reached a shard's leader here while an earlier attempt of the
	// same request waited to commit, and waited on that attempt instead
	// of being proposed: they take its result, or are proposed after all
	// if it failed.
	Joined uint64
	// FollowerReads counts the batches of linearizable reads (gets and
	// job reads) a follower here answered from its own state after the
	// leader confirmed a read index; RelayedReads the batches the leader
	// answered instead, the follower not having applied the index yet.
	FollowerReads, RelayedReads uint64
	// Forwarded counts the client writes of one key or job (acquires
	// aside) that reached a follower here and went on to their shard's
	// leader, each attempt once; a client that knows the leaders sends a
	// follower few.
	Forwarded uint64
	// LeadershipTransfers counts the shards whose leadership this node
	// handed to a replica on a node under its share (leadership.go).
	LeadershipTransfers uint64
	// LogSyncs counts the fsyncs of the node log since the node started,
	// and LogSyncTime the time they took (zero without a node log): the
	// appends of all the node's groups share them, and they run one at a
	// time, at least RaftLogSyncInterval apart under load.
	LogSyncs    uint64
	LogSyncTime time.Duration
	// LogAppends counts the appends of the node's raft groups to the node
	// log, and LogAppendTime the time they took, each until a sync made
	// it durable (nodelog.Stats).
	LogAppends    uint64
	LogAppendTime time.Duration
}

// Node is one shoal process: a replica of each shard the spec gives it, a
// UDP listener for clients, and a TCP listener for raft and its peers.
type Node struct {
	id  string
	cfg Config
	log *slog.Logger
	// view is the metadata the node follows and the replicas it holds by
	// it; install and reconcile replace it, under installMu. Peers may
	// call in through the node listener before started is set, and are
	// told to retry.
	view      atomic.Pointer[view]
	installMu sync.Mutex
	dir       *directory
	started   atomic.Bool
	// metadataChanged wakes the control group's driver (runControl).
	metadataChanged chan struct{}
	// shipStuck holds, per slot move, since when its shipments have
	// shipped nothing; moveStuck, per replica move, since when its target
	// has not answered. The driver (runControl) alone uses them;
	// they hold the moves in progress only.
	shipStuck map[uint64]stuck
	moveStuck map[shard.Move]stuck
	// avoid holds the nodes that failed to answer as move targets, and
	// since when: the driver does not choose them for avoidFor.
	avoid map[string]time.Time
	// raftLog holds the raft logs of all the node's replicas; nil if the
	// spec keeps a log per replica (LogStoreBolt). It closes after them.
	raftLog *nodelog.Store

	transport wire.Transport
	sealed    *wire.SealedTransport // transport, unless insecure
	mux       *mux
	rpc       *rpc.Server
	// rpcRemoved serves the nodes the cluster removed.
	rpcRemoved *rpc.Server
	peers      *peers
	clients    *clients
	activity   *activity
	acquires   acquireFlights
	longPolls  *longPolls
	jobs       *jobWatch
	inFlight   chan struct{}
	// timersChanged wakes runSchedules.
	timersChanged chan struct{}

	requests, malformed, busy, longPollsRefused atomic.Uint64
	forwarded, leadershipTransfers              atomic.Uint64

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	group     group
	closeOnce sync.Once
	closeErr  error
	// done is closed once (stop), when the node stops serving on its own
	// or Close has stopped it; doneErr, written before, says why.
	done     chan struct{}
	stopOnce sync.Once
	doneErr  error
}

// Start opens the node's replicas on cfg.DataDir, starts their raft groups
// and begins serving clients. ctx bounds the start only.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	cfg.setDefaults()
	if cfg.Spec == nil {
		return nil, fmt.Errorf("%w: no spec", ErrInvalidSpec)
	}
	if err := cfg.Spec.Validate(); err != nil {
		return nil, err
	}
	if cfg.Secret == nil && !cfg.Insecure {
		if cfg.Transport != nil {
			cfg.Transport.Close()
		}
		return nil, fmt.Errorf("%w: no secret for client traffic (Config.Secret), and not Insecure", ErrNoCredentials)
	}
	if cfg.Secret != nil {
		if err := cfg.Spec.CheckSecret(cfg.Secret); err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
	}
	self := cfg.Spec.Node(cfg.ID)
	if self == nil {
		return nil, fmt.Errorf("%w: node %q is not in the spec", ErrInvalidSpec, cfg.ID)
	}
	switch {
	case cfg.PeerTLS != nil:
		if err := cfg.PeerTLS.check(cfg.ID); err != nil {
			return nil, err
		}
	case !cfg.Insecure:
		return nil, fmt.Errorf("%w: node %s has no PeerTLS to authenticate its peers; "+
			"set Config.Insecure to run without, on a trusted network only", ErrNoCredentials, cfg.ID)
	}
	c, wasKept, err := startingMetadata(cfg)
	if err != nil {
		return nil, err
	}
	n := &Node{
		id:        cfg.ID,
		cfg:       cfg,
		log:       cfg.Logger.With("node", cfg.ID),
		dir:       new(directory),
		activity:  newActivity(cfg.LoadTimeConstant, time.Now()),
		clients:   newClients(cfg.MaxHeartbeatClients, cfg.ClientTTL),
		inFlight:  make(chan struct{}, cfg.MaxInFlight),
		longPolls: newLongPolls(cfg.MaxLongPolls, cfg.MaxLongPollsPerClient),
		jobs:      newJobWatch(),

		timersChanged:   make(chan struct{}, 1),
		metadataChanged: make(chan struct{}, 1),
		shipStuck:       make(map[uint64]stuck),
		moveStuck:       make(map[shard.Move]stuck),
		avoid:           make(map[string]time.Time),
		done:            make(chan struct{}),
	}
	n.dir.set(c)
	n.view.Store(&view{cluster: c, topology: topologyOf(c), replicas: map[shard.ID]*replica{}})
	n.ctx, n.cancel = context.WithCancel(context.Background())
	d := &dialer{creds: cfg.PeerTLS, nodeAt: n.dir.nodeAt}
	n.peers = newPeers(n.dir.raftAddr, d, 2*time.Second, peerIdleTimeout/2)
	n.rpc, n.rpcRemoved = rpc.NewServer(), rpc.NewServer()
	if err := errors.Join(n.rpc.RegisterName("Node", &nodeService{n: n}),
		n.rpcRemoved.RegisterName("Node", &removedService{n: n})); err != nil {
		n.cancel()
		return nil, err
	}
	n.transport = cfg.Transport
	if n.transport == nil {
		if n.transport, err = wire.ListenUDP(self.clientListen()); err != nil {
			n.cancel()
			return nil, err
		}
	}
	if cfg.Secret != nil {
		n.sealed = wire.Seal(n.transport, cfg.Secret, wire.NodeSide)
		addrs, err := clientAddrs(ctx, self.Client, n.transport.LocalAddr())
		if err != nil {
			n.sealed.Close()
			n.cancel()
			return nil, err
		}
		n.sealed.SetAddrs(addrs...)
		n.transport = n.sealed
	}
	mc := muxConfig{listen: self.raftListen(), advertise: self.Raft, log: n.log, serveRPC: n.serveRPC, dialer: d,
		mayCarry: n.dir.mayCarry}
	if cfg.PeerTLS != nil {
		mc.tls = cfg.PeerTLS.serverTLS(n.dir.mayConnect)
	}
	if n.mux, err = newMux(mc); err != nil {
		n.Close()
		return nil, err
	}
	held := c.Holds(cfg.ID)
	if n.raftLog, err = openRaftLog(cfg, held); err != nil {
		n.Close()
		return nil, err
	}
	if wasKept {
		if err := n.deleteStray(); err != nil {
			n.Close()
			return nil, err
		}
	}
	if n.raftLog != nil {
		if err := checkReplicaLogs(cfg.DataDir, held, n.raftLog, cfg.Spec.LogStore); err != nil {
			n.Close()
			return nil, err
		}
	}
	if err := n.reconcile(ctx); err != nil {
		n.Close()
		return nil, err
	}
	n.started.Store(true)
	n.group.Go(n.serve)
	n.group.Go(n.heartbeat)
	n.group.Go(n.runSchedules)
	n.group.Go(n.quiesceIdle)
	n.group.Go(n.followMetadata)
	n.group.Go(n.runControl)
	if cfg.LeaderBalanceInterval > 0 {
		n.group.Go(n.balanceLeadership)
	}
	n.log.Info("node started", "client", n.transport.LocalAddr(), "raft", self.Raft,
		"shards", len(n.current().replicas), "metadata_version", c.Version)
	return n, nil
}

// RaftLogSyncInterval is the least time between two fsyncs of a node log
// (nodelog.Config.MinSyncInterval). Under load, the appends of the node's
// groups that arrive within it share one fsync; after a quiet spell an
// append is synced at once, so a lone client's write does not wait. On a
// 2-core VM, where an fdatasync costs 200-270 µs of CPU, 500 µs took sets
// at 8 shards and 64 clients from 2,134 to 3,177-3,627/s and their node
// CPU from 566 to 330-413 µs each (1 and 2 ms did less); at 1 shard,
// 4,965 to 5,442/s.
const RaftLogSyncInterval = 500 * time.Microsecond

// The layout of a node's DataDir: the node log, and a directory per replica
// with its snapshots and its raft-boltdb file (raft state, and the log if
// the node keeps no node log).
const (
	nodeLogDir = "raftlog"
	boltFile   = "raft.db"
)

// replicaDir is the directory of group id's replica in a node's DataDir.
func replicaDir(id shard.ID) string {
	if id == shard.ControlGroup {
		return "control"
	}
	return fmt.Sprintf("shard-%d", id)
}

// openRaftLog opens the node's raft log in DataDir/raftlog, unless the spec
// keeps a log per replica. If it keeps a log per replica, it checks instead that no
// replica of the node (shards) has entries in a node log there: their logs
// would seem empty, and raft would start them from their last snapshot.
func openRaftLog(cfg Config, shards []shard.ID) (*nodelog.Store, error) {
	ncfg := nodelog.DefaultConfig(filepath.Join(cfg.DataDir, nodeLogDir))
	ncfg.Logger = cfg.Logger.With("node", cfg.ID)
	ncfg.MinSyncInterval = RaftLogSyncInterval
	if cfg.Spec.logStore() == LogStoreNode {
		s, err := nodelog.Open(ncfg)
		if err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
		if err := syncDir(cfg.DataDir); err != nil {
			s.Close()
			return nil, fmt.Errorf("server: %w", err)
		}
		return s, nil
	}
	if _, err := os.Stat(ncfg.Dir); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	ncfg.ReadOnly = true
	s, err := nodelog.Open(ncfg)
	if errors.Is(err, nodelog.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("server: checking %s: %w", ncfg.Dir, err)
	}
	defer s.Close()
	groups, err := s.Groups()
	if err != nil {
		return nil, fmt.Errorf("server: checking %s: %w", ncfg.Dir, err)
	}
	for _, id := range shards {
		if slices.Contains(groups, uint64(id)) {
			return nil, fmt.Errorf("%w: the spec keeps a log per shard (log_store %q), but shard %d's log is in the node log %s",
				ErrInvalidSpec, LogStoreBolt, id, ncfg.Dir)
		}
	}
	return nil, nil
}

// clientAddrs returns the addresses clients may send this node's queries
// to, which a sealed query names: every address the spec's client address
// resolves to, and the socket's own, or, for a socket bound to all
// interfaces, those of every interface at its port (a client on the same
// host, or behind the same NAT, may use them).
func clientAddrs(ctx context.Context, spec string, local netip.AddrPort) ([]netip.AddrPort, error) {
	var addrs []netip.AddrPort
	add := func(a netip.Addr, port uint16) {
		if ap := netip.AddrPortFrom(a.Unmap(), port); !slices.Contains(addrs, ap) {
			addrs = append(addrs, ap)
		}
	}
	host, portText, err := net.SplitHostPort(spec)
	if err != nil {
		return nil, fmt.Errorf("%w: client address %q: %v", ErrInvalidSpec, spec, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("%w: client address %q: %v", ErrInvalidSpec, spec, err)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("server: resolving client address %q: %w", spec, err)
	}
	for _, ip := range ips {
		add(ip, uint16(port))
	}
	switch {
	case !local.IsValid():
	case !local.Addr().IsUnspecified():
		add(local.Addr(), local.Port())
	default:
		ifaddrs, err := net.InterfaceAddrs()
		if err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
		for _, ia := range ifaddrs {
			if p, ok := ia.(*net.IPNet); ok {
				if a, ok := netip.AddrFromSlice(p.IP); ok {
					add(a, local.Port())
				}
			}
		}
	}
	return addrs, nil
}

// ID returns the node's id.
func (n *Node) ID() string { return n.id }

// Addr returns the address the node serves clients on.
func (n *Node) Addr() netip.AddrPort { return n.transport.LocalAddr() }

// Counters returns the node's counters.
func (n *Node) Counters() Counters {
	c := Counters{
		Requests: n.requests.Load(), Malformed: n.malformed.Load(), Busy: n.busy.Load(),
		LongPollsRefused: n.longPollsRefused.Load(), HeartbeatClientsEvicted: n.clients.evictions(),
		Forwarded: n.forwarded.Load(), LeadershipTransfers: n.leadershipTransfers.Load(),
	}
	if n.sealed != nil {
		c.Unauthenticated = n.sealed.Rejected()
	}
	if n.raftLog != nil {
		if st, err := n.raftLog.Stats(); err == nil {
			c.LogSyncs, c.LogSyncTime = st.Syncs, st.SyncTime
			c.LogAppends, c.LogAppendTime = st.Appends, st.AppendTime
		}
	}
	for _, rep := range n.current().replicas {
		c.Joined += rep.proposing.joined.Load()
		c.FollowerReads += rep.followerReads.Load()
		c.RelayedReads += rep.relayedReads.Load()
	}
	return c
}

// serveRPC serves one connection of node peer until it closes, or sends
// nothing for idle while no call of it runs. A node the cluster removed
// may only learn that it was (removedService). It may run before Start
// has set n.mux: the listener accepts from the moment it exists.
func (n *Node) serveRPC(conn net.Conn, peer string, idle time.Duration) {
	srv := n.rpc
	if peer != "" && n.dir.removed(peer) {
		srv = n.rpcRemoved
	}
	if !n.group.Go(func() { srv.ServeCodec(newServerCodec(conn, idle)) }) {
		conn.Close()
	}
}

// Status reports the node's view of each of its shards.
func (n *Node) Status() wire.NodeStatus {
	st := wire.NodeStatus{ID: n.id, Activity: n.activity.milli(time.Now())}
	v := n.current()
	for _, id := range v.shardIDs() {
		r := v.replicas[id]
		fs := r.fsm.Stats()
		st.Shards = append(st.Shards, wire.ShardStatus{
			ID:      id,
			State:   r.raft.State().String(),
			Leader:  r.leaderID(),
			Applied: fs.Applied,
			Keys:    fs.Keys,
		})
	}
	return st
}

// Holds reports whether the node holds a replica of shard id: a voter, or
// a move's target catching up.
func (n *Node) Holds(id shard.ID) bool { return n.replica(id) != nil }

// ShardStats are the counters and sizes of one replica's state machine.
type ShardStats = fsm.Stats

// ShardStats returns the state machine counters of this node's replica of
// shard id, zero if it holds none.
func (n *Node) ShardStats(id shard.ID) ShardStats {
	if r := n.replica(id); r != nil {
		return r.fsm.Stats()
	}
	return ShardStats{}
}

// Leading reports whether this node's replica of shard id leads its group
// and is ready in its term: it has applied every write acknowledged before
// the term began, so it serves writes and linearizable reads at once.
func (n *Node) Leading(id shard.ID) bool {
	r := n.replica(id)
	return r != nil && r.isLeader() && r.readyTerm.Load() == r.raft.CurrentTerm()
}

// Barrier waits until this node's replica of shard id, which must lead
// it (else ErrNotLeader), has applied every write proposed before the
// call. The barrier is a raft entry of its own, which state machines do
// not see: sending it to the followers tells them that the entries
// committed before it are, which they otherwise learn only with the
// leader's next entry or after CommitTimeout. So once they have applied
// those, their StateDigests and the leader's compare. ctx bounds the wait
// for raft to take the barrier; the wait for it to apply ends when raft
// applies it, fails it (leadership lost) or shuts down.
func (n *Node) Barrier(ctx context.Context, id shard.ID) error {
	r := n.replica(id)
	switch {
	case r == nil:
		return fmt.Errorf("%w: node %s, shard %d", ErrNoReplica, n.id, id)
	case !r.isLeader():
		return fmt.Errorf("%w: node %s, shard %d", ErrNotLeader, n.id, id)
	}
	var timeout time.Duration // none: raft waits to take it as long as it must
	if d, ok := ctx.Deadline(); ok {
		if timeout = time.Until(d); timeout <= 0 {
			return ctx.Err()
		}
	}
	return awaitFuture(r.raft.Barrier(timeout), r.stop)
}

// StateDigest identifies the state of a replica as of a raft index.
type StateDigest struct {
	// Applied is the raft index the state has applied.
	Applied uint64
	// Sum is a SHA-256 of the state. Replicas of a shard that applied the
	// same log have the same Sum; a replica whose Sum differs from the
	// others' at the same Applied has diverged.
	Sum [32]byte
}

// ErrNoReplica is returned (wrapped) for a shard the node holds no
// replica of.
var ErrNoReplica = errors.New("server: no replica of the shard")

// StateDigest returns the digest of this node's replica of shard id. It
// copies and hashes the whole state, in time linear in its size.
func (n *Node) StateDigest(id shard.ID) (StateDigest, error) {
	r := n.replica(id)
	if r == nil {
		return StateDigest{}, fmt.Errorf("%w: node %s, shard %d", ErrNoReplica, n.id, id)
	}
	applied, sum, err := r.fsm.Digest()
	return StateDigest{Applied: applied, Sum: sum}, err
}

// shardIDs returns the shards of the view's replicas, in ascending order.
func (v *view) shardIDs() []shard.ID {
	ids := make([]shard.ID, 0, len(v.replicas))
	for id := range v.replicas {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// ErrHandover is returned (wrapped) by Shutdown when the node could not hand
// the leadership of a shard over; the node is closed all the same, and the
// shard's other replicas elect a leader after their heartbeat timeout.
var ErrHandover = errors.New("server: leadership handover failed")

// Shutdown stops the node gracefully: it hands leadership of the shards it
// leads to another replica, so clients see no election timeout, then
// closes. ctx bounds the handover; Close runs in any case.
func (n *Node) Shutdown(ctx context.Context) error {
	giveUp := make(chan struct{})
	defer context.AfterFunc(ctx, func() { close(giveUp) })()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, r := range n.current().replicas {
		if !r.isLeader() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.stayAwake()
			if err := awaitFuture(r.raft.LeadershipTransfer(), giveUp); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%w: shard %d: %v", ErrHandover, r.id, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(append(errs, n.Close())...)
}

// Done returns a channel that is closed when the node has stopped serving
// on its own, or once Close (or Shutdown) has stopped it: Err then says
// which. A node stops on its own when it learns that the cluster removed
// it, once it has deleted its replicas; it then holds nothing, and its
// owner should Close it (Done closing never releases the node's
// resources) and not start it again (Start would fail with ErrRemoved).
func (n *Node) Done() <-chan struct{} { return n.done }

// Err returns nil while Done is open, and after: an error wrapping
// ErrRemoved if the node stopped because the cluster removed it, nil if
// its owner closed it first.
func (n *Node) Err() error {
	select {
	case <-n.done:
		return n.doneErr
	default:
		return nil
	}
}

// stop closes Done with err, Err's answer; only its first call counts.
func (n *Node) stop(err error) {
	n.stopOnce.Do(func() {
		n.doneErr = err
		close(n.done)
	})
}

// Close stops the node at once. To its peers it looks like a crash: they
// elect new leaders for the shards it led. Its data stays on disk. Done is
// closed when Close returns.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.transport != nil {
			errs = append(errs, n.transport.Close())
		}
		n.cancel()
		// Once ctx is cancelled, reconcile changes nothing: the view
		// taken after any running one ends is the last.
		n.installMu.Lock()
		v := n.current()
		n.installMu.Unlock()
		var wg sync.WaitGroup
		var mu sync.Mutex
		if v.control != nil {
			wg.Go(func() {
				if err := v.control.close(); err != nil && !errors.Is(err, raft.ErrRaftShutdown) {
					mu.Lock()
					errs = append(errs, fmt.Errorf("control group: %w", err))
					mu.Unlock()
				}
			})
		}
		for _, r := range v.replicas {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := r.close(); err != nil && !errors.Is(err, raft.ErrRaftShutdown) {
					mu.Lock()
					errs = append(errs, fmt.Errorf("shard %d: %w", r.id, err))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if n.raftLog != nil {
			errs = append(errs, n.raftLog.Close())
		}
		if n.mux != nil {
			errs = append(errs, n.mux.close())
		}
		n.peers.close()
		n.group.Wait()
		n.closeErr = errors.Join(errs...)
		n.log.Info("node stopped")
		n.stop(nil)
	})
	return n.closeErr
}

// heartbeat tells every recent client, every HeartbeatInterval, the node's
// load, which shards it leads and follows, and their ready topics.
func (n *Node) heartbeat() {
	t := time.NewTicker(n.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case now := <-t.C:
			to := n.clients.recent(now)
			if len(to) == 0 {
				continue
			}
			b, err := n.heartbeatMessage(now)
			if err != nil {
				n.log.Error("encoding heartbeat", "err", err)
				continue
			}
			for _, addr := range to {
				_ = n.transport.Send(b, addr) // best effort, like the datagram itself
			}
		}
	}
}

// maxHeartbeatSize bounds a heartbeat, its shard lists aside (those grow
// with the shards of the spec only): the ready report takes what room is
// left under it. A heartbeat goes to every recent client four times a
// second, so it must stay small, and within one unfragmented datagram on
// any path (IPv6 guarantees 1,280 bytes, headers included), with room to
// spare for a sealing envelope: the loss of one fragment would lose it
// whole.
const maxHeartbeatSize = 1024

// heartbeatMessage encodes the heartbeat of now: the node's load, which
// shards it leads and follows, and as many of their ready topics as fit
// in maxHeartbeatSize.
func (n *Node) heartbeatMessage(now time.Time) ([]byte, error) {
	m := wire.Message{Type: wire.TypeHeartbeat, Node: n.id, Activity: n.activity.milli(now)}
	v := n.current()
	m.Heartbeat.MapVersion = v.cluster.Version
	for _, id := range v.shardIDs() {
		if v.replicas[id].isLeader() {
			m.Heartbeat.Leads = append(m.Heartbeat.Leads, id)
		} else {
			m.Heartbeat.Follows = append(m.Heartbeat.Follows, id)
		}
	}
	b, err := wire.Encode(&m)
	if err != nil || len(m.Heartbeat.Leads) == 0 {
		return b, err
	}
	if m.Heartbeat.Ready = n.readyReports(now, m.Heartbeat.Leads, maxHeartbeatSize-len(b)); len(m.Heartbeat.Ready) == 0 {
		return b, nil
	}
	return wire.Encode(&m)
}
