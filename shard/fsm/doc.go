// Package fsm is the replicated state machine of one shard: versioned keys,
// jobs and schedules, and the client sessions that make retried writes
// apply once. Only the node (package server) uses it; clients and the wire
// protocol know nothing of it.
//
// FSM is a raft.FSM. Its duties toward callers:
//
//  1. Every write goes through raft as a Command: the proposing leader stamps
//     it with its clock (Command.Now), and the FSM uses no other time but
//     what ops carry in the log (a retry's Op.Began), so all replicas reach
//     the same state. Randomness too comes in the log (an acquire's
//     Op.Grant, or a complete-and-acquire's Op.NextGrant, drawn by the
//     proposing node).
//  2. Every client write carries the client's id, a sequence number and an
//     acknowledgement floor (Op.Client, Op.Seq, Op.Ack). The FSM applies each
//     (client, sequence) at most once, answering retries from the client's
//     session, which is part of the replicated state and of every snapshot,
//     so this holds across leader changes and restarts. A request that does
//     two things is one op, so that one result answers for both: a
//     KindCompleteAcquire (a completion, then a grant) and a
//     KindEnqueueBatch (up to MaxBatch enqueues, all or none).
//  3. Reads (Get) see the state as of the last applied entry (Applied). A
//     linearizable read must read a state that has applied an index the
//     leader confirmed; the FSM itself knows nothing about leadership.
//
// Jobs live beside the keys: each topic's queued and leased jobs are kept in
// heaps by when they become available, so an acquire hands out the job
// ready longest, the same one on every replica. Leases carry fencing tokens
// from the shard's revision counter, and a grant: the random proof that
// the ops on a leased job must present with the token. The first command of a new raft term
// (a new leader's) extends the leases live under the old leader by the
// grace, before anything else; the term comes from the log entry, so every
// replica does the same.
//
// Slot moves. A range of slots [Start, End) moves from shard S to shard T
// as a sequence of raft entries that the node drives, each under the move's
// id (Op.Version, chosen by the node, never 0):
//
//  1. S applies KindFreezeSlots: the range's keys, its jobs of every state
//     (a job is of the slot shard.JobSlot(id)) with their uniqueness keys,
//     its schedules (shard.JobKeySlot(topic, key)), and the results the
//     client sessions keep of ops on its slots leave the live tables for
//     the move's frozen area. From then on every op on the range gets
//     StatusMoving, retries included; reads (Get, GetJob) still see it, and
//     SlotStatus says StatusOK; an acquire no longer sees its jobs.
//  2. The node calls ExportSlots on S's leader: the frozen range as chunks,
//     the same for the same state, each saying its move, index and count.
//     They carry S's revision counter, and the times jobs and
//     schedules wait for as the time remaining after S's clock then.
//  3. T applies KindInstallSlots once per chunk (Op.Value): held, not live;
//     ops on the range at T get StatusMoving from the first. T's revision
//     counter rises to S's, so versions and fencing tokens keep growing.
//  4. S applies KindDropSlots: the frozen state is deleted and the range is
//     gone: ops on it, and SlotStatus, say StatusWrongShard.
//  5. The shard map gives the range to T.
//  6. T applies KindActivateSlots once every chunk is installed: the state
//     becomes live, jobs queued after T's own in their order at S, leases
//     with their tokens and grants ending as long after the activation as
//     they had left at the freeze, session results merged into T's sessions
//     (a retry of a write S applied is answered at T, not applied again).
//
// KindThawSlots at S before the drop cancels a move, putting the frozen
// state back, or, sent before any freeze, remembering the move as
// cancelled so that no later freeze of it applies; a KindDropSlots at T
// before activation discards what T installed, or, sent before any chunk,
// remembers the move as discarded so that no later chunk of it installs.
// Every step repeated is a no-op, and Moves lists the moves in flight and
// the last ones finished, for the node to resume them. Moves in flight at
// one shard cover disjoint ranges.
//
// Bounds: every table of the state machine but the keys (which the disk
// bounds) is bounded, and an op past a bound is refused with a status of
// its own, never applied in part.
//
//   - Sessions: Config.MaxSessions per shard (DefaultMaxSessions, 10,000),
//     the one idle longest forgotten for a new client; also forgotten after
//     Config.SessionTTL idle. A retry that a forgotten session could have
//     answered gets StatusSessionExpired (sessions.begin); results keep no
//     job payload or topic. Per session, MaxPendingPerClient results, and
//     MaxKeptIDBytes (64 KiB) of the job ids batches answered that are not
//     their own, plus one batch's; past either a new op gets
//     StatusTooManyPending until the client acknowledges results.
//   - Jobs: Config.MaxJobs per shard (DefaultMaxJobs, 100,000) of every
//     state, dead ones included; an enqueue past it gets StatusFull, and so
//     does a batch without room for every job it holds.
//   - Topics: only topics with jobs are held; an empty one is forgotten,
//     its count of completions with it.
//   - Schedules: Config.MaxSchedules per shard (DefaultMaxSchedules, 1,000),
//     intervals of at least shard.MinScheduleInterval (a second); a stopped
//     schedule is deleted.
//   - Names: keys, topics, job ids, uniqueness and schedule keys of at most
//     shard.MaxKeySize bytes.
//   - Slot moves: the slots gone are marks (at most shard.SlotCount), and
//     of the moves finished only the last 1,024 are remembered. An activation
//     or a thaw is never refused for room: it may take a shard past
//     Config.MaxJobs, MaxSchedules or MaxPendingPerClient, which then
//     refuses new ones until it is back under.
package fsm
