// Package client is the Go client of shoal.
//
// New learns the cluster's nodes and shard map from any seed; after that,
// nodes heartbeat to the client with their activity and the shards they
// lead, and the client asks again for the map when a heartbeat announces a
// newer one. A read goes to a live replica of its key's shard, chosen by
// the Picker from each node's load: the requests in progress the node
// reports, plus the client's own requests in flight there. A write goes
// first to the replica believed to lead its shard, from the heartbeats
// and from a follower's reply naming the leader (it forwarded the write
// there), and its retries by the Picker to the others: writes are balanced
// by where the leaders are, which the nodes spread, and a follower
// forwards a write that reaches it. A node not heard from for
// Config.NodeTimeout is skipped until it is heard again.
//
// Every request carries the client's id and a sequence number, the same on
// every attempt, so a write is applied at most once however many of its
// attempts arrive, and on whichever node. An attempt waits for a timeout
// derived from measured round trips; after Config.Attempts attempts, and
// once Config.ReplyGrace has passed with no late reply to any of them, the
// call fails with ErrUnavailable, and a write that failed so may or may not
// have been applied, now or a little later.
//
// Jobs: Enqueue, Acquire (which waits at the nodes, not by polling),
// Extend, Complete, Fail and Release under the lease's fencing token, and
// Worker, which runs a handler on a topic's jobs and keeps their leases.
//
// Caller's duties:
//
//  1. Give every call a context; its deadline bounds the call whatever the
//     attempts.
//  2. Settle a write that failed with ErrUnavailable by repeating it in a
//     form that is safe to repeat (the same Set, a CompareAndSet), not by
//     reading.
//  3. Close the client when done; calls in flight may finish first.
package client
