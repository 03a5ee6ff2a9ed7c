// Package server is a shoal node: it hosts the replicas the cluster's
// metadata gives it, serves clients over a datagram Transport (UDP), and
// talks to its peers over one TCP listener.
//
// The metadata (shard.Cluster: members and their addresses, the shard map,
// the control group's voters, the moves in progress) lives in the control
// group, a raft group of its own on up to three nodes whose state machine
// is package control; the Spec bootstraps it. Every node follows it
// (controlgroup.go): it keeps the newest metadata it has seen in
// DataDir/metadata.json and starts from it, opens the replicas the metadata
// gives it, and closes and deletes, data included, those it no longer
// does. Changes are commands to the control group (admin.go: AddNode,
// MoveReplica, RemoveNode, Rebalance, SplitShard, MoveSlots; wire.OpCluster
// carries them from clients), which its leader carries out online: a
// replica moves one raft configuration change at a time, each guarded by
// the configuration index it was based on (mover.go), and a range of slots
// moves as a freeze, a shipment, a drop, a flip of the map and an
// activation, each a raft entry (slotmover.go). A removed node may not
// return (ErrRemoved).
//
// Each replica is its own hashicorp/raft instance with its own snapshot
// store and raft state (term and vote, in a raft-boltdb file) under
// Config.DataDir, so a node started again on the same directory comes back
// with its data. The replicas' raft logs share one node log (package
// nodelog, a Pebble database, fsync on): the appends that the node's groups
// make at once go to disk with one fsync, so more shards on a node do not
// mean more fsyncs per write. A spec whose log_store is "bolt" keeps each
// replica's log in its raft-boltdb file instead. Raft has no multi-raft
// support; all groups of a node share its listener, and
// every connection opens with a preamble that names its shard (or the node
// RPC service, which forwards writes and read-index requests to leaders).
// That traffic runs over mutual TLS 1.3 with the cluster's CA
// (Config.PeerTLS, LoadPeerTLS; package certs makes the credentials): a
// node takes connections only from members of the cluster (a removed node
// may only ask for the metadata that says so), and raft streams of a group
// only from the nodes holding, or being given, its replicas. The listener bounds what peers may hold
// (connections, handshakes, idle time, message sizes; see mux.go) and
// keeps accepting through a shortage of file descriptors.
//
// Requests:
//
//   - Writes reaching a follower are forwarded to the shard's leader, and
//     retried there, with the client's sequence number, while leadership
//     moves, until the request's budget (the client's attempt timeout) runs
//     out; the reply names the leader (wire.Message.Leader), to which the
//     client sends the shard's next writes. The leader stamps each command
//     with its clock.
//   - Leadership is spread: a node that leads more than its share of shards
//     (each shard's leadership split evenly over its replicas) for a while
//     hands one shard's leadership to a replica on a node under its share,
//     once that replica has answered in the leader's term with its log up
//     to the leader's commit index for two checks in a row
//     (Config.LeaderBalanceInterval; see leadership.go). Writes go to
//     leaders, so this is what balances them after a failover or restart.
//     Counters.LeadershipTransfers counts the transfers, Counters.Forwarded
//     the writes followers forwarded.
//   - Reads are linearizable by default on every replica, and served where
//     they land (ReadIndex, as etcd's and TiKV's follower reads): the
//     leader confirms its leadership by asking the other replicas their
//     raft term, one round shared by concurrent reads, and hands out its
//     applied index; a follower asks for one index for the reads that
//     arrived together and answers them from its own state if it had
//     applied the index, or takes the leader's answers if it had not (a
//     follower learns of a commit only with the leader's next append). A
//     stale read answers from the replica's own state at once, which
//     trails the leader's by up to about two CommitTimeouts when writes
//     stop.
//   - Every reply and heartbeat carries the node's activity: the client
//     requests in progress at the node, from their arrival at its socket
//     (the kernel's receive stamp, on Linux) to their reply, averaged over
//     time (time constant Config.LoadTimeConstant), in thousandths. The
//     receive loop answers stale reads, pings and topology queries itself
//     and gives every other request a goroutine. Heartbeats go every
//     Config.HeartbeatInterval to each client heard from within
//     Config.ClientTTL.
//
// Operators and tests look at a node through Status, ShardStats, Leading
// (leads a shard and serves), and StateDigest, a hash of a replica's state
// at its applied index that the replicas of a shard must agree on once they
// have applied the same log (Barrier makes the followers learn of the last
// commit). Package servertest runs whole clusters in one process.
//
// A Node's owner stops it with Shutdown (hands leadership over first, as
// on SIGTERM) or Close (at once; to its peers, a crash), and watches Done:
// a node that learns the cluster removed it deletes its replicas and stops
// serving on its own, and Err then wraps ErrRemoved. Its owner should then
// Close it and not start it again (Start refuses with ErrRemoved); `shoal
// server` exits with status 3. Done also closes once Close has returned.
package server
