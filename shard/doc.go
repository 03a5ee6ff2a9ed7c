// Package shard is shoal's keyspace: what a key, a topic and a job id are,
// which of SlotCount fixed slots each hashes to, and the versioned Map that
// assigns slots to shards and shards to the nodes holding their replicas.
// Clients, the wire protocol and nodes share it; it holds no state and
// links nothing of raft.
//
// A key hashes (xxhash64) onto a slot; the slot of a key never changes,
// only the slot → shard assignment may. A job id made by NewJobID carries
// its slot, so a job can be placed on any shard and found again; the jobs
// with a uniqueness key, and schedules, live at JobKeySlot.
//
// CheckKey, CheckValue, CheckTopic, CheckJobID and CheckJobKey are the one
// statement of the limits on names and values: the client runs them before
// it sends, and the node when a request arrives; the state machine (package
// shard/fsm) checks the names an op needs before it applies it.
package shard
