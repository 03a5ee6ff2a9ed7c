// Package control is the state machine of the control group: the raft
// group (hashicorp/raft, like every shard) that replicates the cluster's
// metadata, a shard.Cluster, in place of the static spec file. Nodes
// follow the metadata it holds; the control group's leader drives the
// changes (adding and draining nodes, moving replicas) by proposing
// Commands.
//
// The log holds Commands, JSON-encoded (they are few and small, and a
// person reading a log should see what it says). FSM applies them and
// keeps the state after each as an immutable *shard.Cluster; Current
// reads it and Wait blocks until it is newer than a version the caller
// knows.
//
// Invariants the caller may rely on:
//
//  1. Every Command is idempotent: repeating one that has taken effect is
//     a no-op that returns the current state. A driver that crashed
//     between proposing a command and learning its outcome proposes it
//     again.
//  2. Every change makes Cluster.Version (and Map.Version with it) one
//     larger; a no-op or a refusal leaves it as it was. The first change
//     is the init command, which installs the bootstrap metadata at the
//     version it carries (at least 1); the first init applied wins and
//     later ones are no-ops, so every control voter's first leader may
//     propose it.
//  3. Every state installed Validates: a command whose result would not
//     is refused (ErrRejected) and changes nothing, as is a log entry
//     that does not decode. An unknown kind is refused with
//     ErrUnknownCommand, so a newer command reaching an older node fails
//     that one entry rather than the node. That refusal is still a
//     divergence from the voters that know the kind: a new kind may be
//     proposed only once every control voter runs a version that knows it.
//
// The planners (NextDrainMove, Droppable, RebalanceMove) are pure
// functions of a Cluster: given the same metadata, every leader plans
// the same next step.
package control
