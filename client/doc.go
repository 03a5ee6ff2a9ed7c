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
// derived from measured round trips, twice as long after each attempt of
// the request that got no reply; after an error reply the next attempt
// waits a backoff that doubles up to half a second, jittered.
//
// How long a request retries follows its context. With a deadline, it
// sends attempts until the deadline (or a cancel), taking a late reply to
// any of its latest ones, and then fails with an error that wraps the
// context's (errors.Is(err, context.DeadlineExceeded)) and says how many
// attempts it made and the last error; so a stall of a leader's disk or
// process that ends before the deadline need not fail it. Without a
// deadline,
// it makes Config.Attempts attempts and, once Config.ReplyGrace has passed
// with no late reply to any of them, fails with ErrUnavailable. Either
// way, a write that failed may or may not have been applied, now or a
// little later.
//
// Jobs: Enqueue, and EnqueueBatch for many at once (one request per shard);
// Acquire (which waits at the nodes, not by polling); Extend, Complete,
// Fail and Release under the lease's fencing token; CompleteAndAcquire,
// which completes a job and leases the next of its shard in one request;
// and Worker, which runs a handler on a topic's jobs, keeps their leases,
// and takes its next job with each completion.
//
// Cluster changes (adding, moving and removing replicas and nodes) are
// commands to the cluster's control group: Admin sends one through any
// live node and decodes its JSON answer; the server package names the
// commands and their arguments.
//
// Caller's duties:
//
//  1. Give every call a context; its deadline bounds the call, and is what
//     the call retries until. A context without one stops a call after
//     Config.Attempts attempts.
//  2. Settle a write that failed with ErrUnavailable or with its context's
//     error by repeating it in a form that is safe to repeat (the same Set,
//     a CompareAndSet), not by reading.
//  3. Close the client when done; calls in flight may finish first.
package client
