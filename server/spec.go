package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/shoal-kv/shoal/shard"
	"github.com/shoal-kv/shoal/wire"
)

// Spec describes a cluster: its nodes with their addresses, its shards with
// their replicas, and the raft timing every group uses. Every node of a
// cluster must be started with the same Spec; `shoal cluster up` writes one
// to DIR/cluster.json.
type Spec struct {
	Nodes []NodeSpec `json:"nodes"`
	// Shards lists every shard and the nodes holding its replicas: 2 or 3
	// of them (1 for a cluster that need not survive anything).
	Shards []shard.Shard `json:"shards"`
	// Ranges assigns slots to shards. If empty, the slots are split evenly
	// in shard order.
	Ranges []shard.Range `json:"ranges,omitempty"`
	// MapVersion is the version of the shard map. If zero, it is 1.
	MapVersion uint64 `json:"map_version,omitempty"`
	// Raft is the timing of every raft group. Zero fields take defaults.
	Raft RaftTiming `json:"raft"`
	// LogStore is where a node keeps its raft groups' logs: LogStoreNode
	// or LogStoreBolt. It cannot change once a node has data: a node
	// refuses to start on logs kept the other way. If empty, the logs of
	// new replicas go to the node log, and a replica whose log is in its
	// own file (one made before the node log) keeps it there.
	LogStore string `json:"log_store,omitempty"`
	// SecretIDs are the key ids (wire.Keyring.IDs) of the secrets the
	// cluster's nodes seal with. They say nothing of the secrets; a node
	// whose secret seals under another id refuses to start, and the CLI
	// refuses a secret that is not the cluster's at once ("authentication
	// failed") rather than waiting for replies that will not come. When a
	// secret is rotated, list both ids until every node seals with the
	// new one. If empty, nothing is checked.
	SecretIDs []string `json:"secret_ids,omitempty"`
}

// CheckSecret reports, wrapping wire.ErrAuth, whether keys seal under a
// key id the spec lists (SecretIDs); any keys pass a spec that lists none.
func (s *Spec) CheckSecret(keys *wire.Keyring) error {
	if len(s.SecretIDs) == 0 {
		return nil
	}
	id := keys.IDs()[0]
	if !slices.Contains(s.SecretIDs, id) {
		return fmt.Errorf("%w: the secret seals under key id %s, which is not the cluster's (its spec lists %s)",
			wire.ErrAuth, id, strings.Join(s.SecretIDs, ", "))
	}
	return nil
}

// The log stores a Spec may name.
const (
	// LogStoreNode keeps the logs of all a node's raft groups in one
	// Pebble database (server/nodelog) in DataDir/raftlog: the appends
	// that arrive together from any of its groups share one fsync.
	LogStoreNode = "node"
	// LogStoreBolt keeps each raft group's log in its own bbolt file
	// (raft-boltdb), with its own fsyncs.
	LogStoreBolt = "bolt"
)

// logStore returns the log store the spec names, its default filled in.
func (s *Spec) logStore() string {
	if s.LogStore == "" {
		return LogStoreNode
	}
	return s.LogStore
}

// NodeSpec is one node: its id and its addresses.
type NodeSpec struct {
	ID string `json:"id"`
	// Raft is the TCP address peers reach the node at, for raft and
	// node-to-node traffic.
	Raft string `json:"raft"`
	// Client is the UDP address clients send requests to.
	Client string `json:"client"`
	// RaftListen and ClientListen are where the node binds, if not at Raft
	// and Client: "0.0.0.0:7000", or a private address behind NAT.
	RaftListen   string `json:"raft_listen,omitempty"`
	ClientListen string `json:"client_listen,omitempty"`
}

// raftListen returns the address the node binds for raft.
func (n *NodeSpec) raftListen() string {
	if n.RaftListen != "" {
		return n.RaftListen
	}
	return n.Raft
}

// clientListen returns the address the node binds for clients.
func (n *NodeSpec) clientListen() string {
	if n.ClientListen != "" {
		return n.ClientListen
	}
	return n.Client
}

// RaftTiming holds the raft settings that must be alike on all replicas.
type RaftTiming struct {
	// HeartbeatTimeout and ElectionTimeout: a follower that hears nothing
	// from its leader for this long starts an election. Default 1s;
	// ElectionTimeout defaults to HeartbeatTimeout.
	HeartbeatTimeout Duration `json:"heartbeat_timeout,omitempty"`
	ElectionTimeout  Duration `json:"election_timeout,omitempty"`
	// LeaderLeaseTimeout: a leader that cannot reach a quorum for this
	// long steps down. At most HeartbeatTimeout, which is its default.
	LeaderLeaseTimeout Duration `json:"leader_lease_timeout,omitempty"`
	// CommitTimeout bounds how long a follower waits to learn of a commit
	// when nothing else is sent: every CommitTimeout (randomized up to
	// twice that) the leader sends each follower an append, even when idle.
	// An idle group's leader heartbeats rarely (it quiesces) only while
	// twice CommitTimeout is at most four fifths of LeaderLeaseTimeout.
	// Default: two fifths of LeaderLeaseTimeout (400ms).
	CommitTimeout Duration `json:"commit_timeout,omitempty"`
	// SnapshotThreshold is the number of log entries between snapshots.
	// Default 8192.
	SnapshotThreshold uint64 `json:"snapshot_threshold,omitempty"`
}

// The default raft timing suits a LAN or loopback. Across data centres,
// raise HeartbeatTimeout to several round trips; the other timeouts follow
// it unless set.
const (
	DefaultHeartbeatTimeout  = time.Second
	DefaultSnapshotThreshold = 8192
)

func (t RaftTiming) withDefaults() RaftTiming {
	set := func(d *Duration, def time.Duration) {
		if *d == 0 {
			*d = Duration(def)
		}
	}
	set(&t.HeartbeatTimeout, DefaultHeartbeatTimeout)
	set(&t.ElectionTimeout, time.Duration(t.HeartbeatTimeout))
	set(&t.LeaderLeaseTimeout, time.Duration(t.HeartbeatTimeout))
	set(&t.CommitTimeout, 2*time.Duration(t.LeaderLeaseTimeout)/5)
	if t.SnapshotThreshold == 0 {
		t.SnapshotThreshold = DefaultSnapshotThreshold
	}
	return t
}

// Duration is a time.Duration written in JSON as a string like "500ms".
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a string like "500ms".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string like \"500ms\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// ErrInvalidSpec is returned (wrapped) for a spec that cannot describe a
// cluster.
var ErrInvalidSpec = errors.New("server: invalid cluster spec")

// maxNodeIDSize bounds a node id, in bytes: well within a file name's
// 255 with a suffix.
const maxNodeIDSize = 128

// CheckNodeID reports, wrapping ErrInvalidSpec, whether id can name a
// node: 1 to 128 bytes, not "." or "..", nor "ca" in any case, without a
// slash, a backslash or a control character. A node's id names files (its certificate and key,
// ID.crt and ID.key; in a local cluster its data directory, pid file and
// log), so it must be a plain file name. Validate checks every node of a
// spec with it, and Node.AddNode a node that joins.
func CheckNodeID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: a node has no id", ErrInvalidSpec)
	case len(id) > maxNodeIDSize:
		return fmt.Errorf("%w: node id of %d bytes exceeds %d", ErrInvalidSpec, len(id), maxNodeIDSize)
	case id == "." || id == "..":
		return fmt.Errorf("%w: node id %q is not a file name", ErrInvalidSpec, id)
	case strings.EqualFold(id, "ca"):
		return fmt.Errorf("%w: node id %q names the cluster CA's files (ca.crt, ca.key)", ErrInvalidSpec, id)
	case strings.ContainsFunc(id, func(r rune) bool { return r == '/' || r == '\\' || unicode.IsControl(r) }):
		return fmt.Errorf("%w: node id %q has a slash, backslash or control character (it names files)", ErrInvalidSpec, id)
	}
	return nil
}

// Validate checks that node ids and addresses are unique and well formed,
// that every replica names a known node, that each shard has 1 to 3
// replicas, and that the shard map is valid.
func (s *Spec) Validate() error {
	if len(s.Nodes) == 0 {
		return fmt.Errorf("%w: no nodes", ErrInvalidSpec)
	}
	seen := map[string]bool{}
	for _, n := range s.Nodes {
		if err := CheckNodeID(n.ID); err != nil {
			return err
		}
		for _, a := range []string{n.Raft, n.Client} {
			host, _, err := net.SplitHostPort(a)
			if err != nil {
				return fmt.Errorf("%w: node %s: address %q: %v", ErrInvalidSpec, n.ID, a, err)
			}
			if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
				return fmt.Errorf("%w: node %s: %q is where others reach the node, so it needs a host; "+
					"to bind all interfaces set raft_listen or client_listen", ErrInvalidSpec, n.ID, a)
			}
		}
		for _, a := range []string{n.RaftListen, n.ClientListen} {
			if _, _, err := net.SplitHostPort(a); a != "" && err != nil {
				return fmt.Errorf("%w: node %s: address %q: %v", ErrInvalidSpec, n.ID, a, err)
			}
		}
		for _, k := range []string{"id " + n.ID, "raft " + n.Raft, "client " + n.Client} {
			if seen[k] {
				return fmt.Errorf("%w: %s appears twice", ErrInvalidSpec, k)
			}
			seen[k] = true
		}
	}
	if ls := s.logStore(); ls != LogStoreNode && ls != LogStoreBolt {
		return fmt.Errorf("%w: log_store %q is neither %q nor %q", ErrInvalidSpec, ls, LogStoreNode, LogStoreBolt)
	}
	for _, sh := range s.Shards {
		if n := len(sh.Replicas); n < 1 || n > 3 {
			return fmt.Errorf("%w: shard %d has %d replicas, want 2 or 3 (1 for no fault tolerance)", ErrInvalidSpec, sh.ID, n)
		}
		for _, r := range sh.Replicas {
			if s.Node(r) == nil {
				return fmt.Errorf("%w: shard %d names unknown node %q", ErrInvalidSpec, sh.ID, r)
			}
		}
	}
	if _, err := s.Map(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSpec, err)
	}
	t := s.Raft.withDefaults()
	if t.LeaderLeaseTimeout > t.HeartbeatTimeout {
		return fmt.Errorf("%w: leader lease timeout %v exceeds heartbeat timeout %v", ErrInvalidSpec,
			time.Duration(t.LeaderLeaseTimeout), time.Duration(t.HeartbeatTimeout))
	}
	if t.ElectionTimeout < t.HeartbeatTimeout {
		return fmt.Errorf("%w: election timeout %v is below heartbeat timeout %v", ErrInvalidSpec,
			time.Duration(t.ElectionTimeout), time.Duration(t.HeartbeatTimeout))
	}
	return nil
}

// Node returns the node with the given id, or nil.
func (s *Spec) Node(id string) *NodeSpec {
	for i := range s.Nodes {
		if s.Nodes[i].ID == id {
			return &s.Nodes[i]
		}
	}
	return nil
}

// Map returns the shard map the spec describes.
func (s *Spec) Map() (*shard.Map, error) {
	m := &shard.Map{Version: s.MapVersion, Shards: s.Shards, Ranges: s.Ranges}
	if m.Version == 0 {
		m.Version = 1
	}
	if len(m.Ranges) == 0 && len(m.Shards) > 0 {
		even, err := shard.NewEvenMap([]string{"-"}, len(m.Shards), 1)
		if err != nil {
			return nil, err
		}
		for i, r := range even.Ranges {
			m.Ranges = append(m.Ranges, shard.Range{Start: r.Start, End: r.End, Shard: m.Shards[i].ID})
		}
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// LocalSpec describes a cluster of nodes n1..nN on 127.0.0.1, with free
// ports picked now, shards shards and replicas replicas of each, spread as
// shard.NewEvenMap spreads them. Another process may take a port before
// the node binds it; the node then fails to start with a clear error.
func LocalSpec(nodes, shards, replicas int) (*Spec, error) {
	ids := make([]string, nodes)
	for i := range ids {
		ids[i] = fmt.Sprintf("n%d", i+1)
	}
	m, err := shard.NewEvenMap(ids, shards, replicas)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSpec, err)
	}
	s := &Spec{Shards: m.Shards}
	// Hold every port until all are picked, so none is picked twice.
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for _, id := range ids {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("server: finding a free port: %w", err)
		}
		held = append(held, l)
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("server: finding a free port: %w", err)
		}
		held = append(held, u)
		s.Nodes = append(s.Nodes, NodeSpec{ID: id, Raft: l.Addr().String(), Client: u.LocalAddr().String()})
	}
	return s, s.Validate()
}

// LoadSpec reads and validates a spec from a JSON file.
func LoadSpec(path string) (*Spec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("server: reading cluster spec: %w", err)
	}
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidSpec, path, err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &s, nil
}

// Save writes the spec as indented JSON, atomically.
func (s *Spec) Save(path string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("server: writing cluster spec: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("server: writing cluster spec: %w", err)
	}
	return nil
}
