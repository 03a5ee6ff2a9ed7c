package wire

import (
	"time"

	"github.com/shoal-kv/shoal/shard"
)

// Type is the kind of a message (KRPC's "y").
type Type string

// The message types.
const (
	// TypeQuery is a request from a client (or a node acting for one).
	TypeQuery Type = "q"
	// TypeResponse answers a query that succeeded.
	TypeResponse Type = "r"
	// TypeError answers a query that failed.
	TypeError Type = "e"
	// TypeHeartbeat is sent unprompted by a node to its recent clients.
	TypeHeartbeat Type = "h"
)

// Message is one datagram, decoded. Which fields are meaningful depends on
// Type; Encode writes only those.
type Message struct {
	Type Type
	// TxID matches a response to its query. A client uses a new TxID for
	// every attempt of a request, so it can time each one. Zero means none.
	TxID uint64

	// Queries only.
	Op Op
	// Client and Seq identify a request across its attempts, also when
	// they reach different nodes. Ack is the lowest sequence number of a
	// mutating request the client has no reply for yet: the cluster may
	// forget the results of everything below it.
	Client string
	Seq    uint64
	Ack    uint64
	// Proof proves the client id is the sender's: only the client that
	// chose Proof, and whoever can open its sealed queries, knows it, and
	// Client is ClientIDOf(Proof). Nodes refuse a query naming a client id
	// without its proof, so that no one who has not seen the client's
	// traffic can advance or read its session.
	Proof string
	// Timeout is how long the client waits for this attempt; the node
	// gives up on the request after it. Zero means the node's default.
	Timeout time.Duration
	// Age is how long ago the client sent the request's first attempt
	// (rounded up to a millisecond); zero for the first attempt. A shard
	// that has since forgotten sessions refuses a retry it cannot tell
	// from one applied before (CodeSessionExpired).
	Age  time.Duration
	Args Args

	// Responses, errors and heartbeats: the sending node and its activity,
	// the client requests in progress at it averaged over its recent past,
	// in thousandths of a request.
	Node     string
	Activity int64

	// Leader, in responses and errors, names the leader of the shard of a
	// write that reached a follower and was forwarded there: the client
	// sends the shard's next writes to it. Nil when the write did not go
	// through a follower, or the follower knew no leader.
	Leader *LeaderHint

	// Responses, and details of some errors.
	Result Result
	// Errors only.
	Err *Error

	// Heartbeats only.
	Heartbeat Heartbeat
}

// Args are the arguments of a query.
type Args struct {
	Key   string
	Value string
	// Version is the expected version for OpCompareAndSet; 0 means the key
	// must not exist.
	Version uint64
	// Stale asks OpGet for the replica's local state without confirming it
	// is current.
	Stale bool

	// Job ops.
	Topic string
	JobID string
	Token uint64
	// Grant goes with Token on the ops of a leased job: the lease's proof
	// (JobInfo.Grant).
	Grant uint64
	Lease time.Duration
	// Delay (from the leader's clock) or RunAt says when a new job may
	// run; neither means now.
	Delay       time.Duration
	RunAt       time.Time
	MaxAttempts int
	Backoff     time.Duration
	// Unique is an enqueue's uniqueness key, or a schedule's key.
	Unique   string
	Reason   string
	Interval time.Duration
	// Shards limits an acquire, and names the shard of a stats or dead
	// listing request.
	Shards []shard.ID
	// Wait is how long an acquire may wait for a job.
	Wait time.Duration
	// Limit bounds the jobs of a dead listing; After is where the listing
	// goes on: the Result.Next of the page before, 0 from the start.
	Limit int
	After uint64
	// Batch holds the jobs of an OpEnqueueBatch, at most MaxBatchJobs.
	Batch []BatchJob
}

// BatchJob is one job of an OpEnqueueBatch, with the meaning of the
// arguments of an OpEnqueue of the same names.
type BatchJob struct {
	ID          string
	Topic       string
	Payload     string
	Delay       time.Duration
	RunAt       time.Time
	MaxAttempts int
	Backoff     time.Duration
	Unique      string
}

// Result is the payload of a response.
type Result struct {
	Value string
	// Version of the key read or written; for a conflict, its current
	// version (0 if absent).
	Version uint64
	// Topology answers OpTopology.
	Topology *Topology
	// Status answers OpStatus.
	Status *NodeStatus
	// Job is the job an op acted on: the grant of an acquire (or the job
	// leased next by an OpCompleteAcquire), the new lease of an extend,
	// the id of an enqueue (that of the live job with the same uniqueness
	// key, if there was one).
	Job *JobInfo
	// Jobs answers OpDeadJobs, and OpEnqueueBatch with the id of each job
	// of the batch, in order, as Job's for an enqueue; Counts answers
	// OpJobStats.
	Jobs   []JobInfo
	Counts *shard.JobCounts
	// Next, for OpDeadJobs, is the Args.After that lists the shard's next
	// page; 0 when this page was the last.
	Next uint64
}

// JobInfo describes a job.
type JobInfo struct {
	ID      string
	Topic   string
	Payload string
	Attempt int
	// Token fences the lease: it grows with every grant of the shard.
	// Grant, 63 random bits, proves the lease: the ops of a leased job
	// need both, so that no one who has not seen the grant can end a
	// lease by guessing its token.
	Token uint64
	Grant uint64
	// Deadline is the end of the lease for a grant or extension; for a
	// failed job, when it runs again (zero if it is dead now).
	Deadline    time.Time
	State       string
	MaxAttempts int
	LastError   string
}

// ReadyCount is how many jobs of Topic are ready on Shard, as its leader
// reports in heartbeats (counted up to a cap).
type ReadyCount struct {
	Shard shard.ID
	Topic string
	Count int
}

// Topology is what a client needs to route: every node's client address
// and the shard map.
type Topology struct {
	Nodes []NodeAddr
	Map   *shard.Map
}

// NodeAddr is a node's id and the UDP address it serves clients on.
type NodeAddr struct {
	ID   string
	Addr string
}

// NodeStatus describes a node for operators.
type NodeStatus struct {
	ID       string
	Activity int64
	Shards   []ShardStatus
}

// ShardStatus is one replica's view of its raft group.
type ShardStatus struct {
	ID shard.ID
	// State is the raft state: Leader, Follower, Candidate or Shutdown.
	State string
	// Leader is the node id of the leader this replica knows, if any.
	Leader  string
	Applied uint64
	Keys    int
}

// LeaderHint names the node a follower forwarded a write of Shard to: the
// leader of Shard as that follower knew it.
type LeaderHint struct {
	Shard shard.ID
	Node  string
}

// Heartbeat is what a node tells its clients unprompted.
type Heartbeat struct {
	// Leads and Follows list the shards the node holds, by role.
	Leads, Follows []shard.ID
	// MapVersion is the version of the node's shard map; a client holding
	// an older one asks for the topology again.
	MapVersion uint64
	// Ready lists, for the shards the node leads, the topics with jobs
	// ready to acquire.
	Ready []ReadyCount
}

// Limits of the protocol. A value of shard.MaxValueSize with a key of
// shard.MaxKeySize fits one datagram with room for the envelope.
const (
	// MaxDatagramSize is the largest datagram a node or client sends or
	// accepts: the most an IPv4 UDP datagram can carry. Over a real network
	// anything above the path MTU (about 1,400 bytes) is fragmented, and the
	// loss of one fragment loses the datagram.
	MaxDatagramSize = 65507
	// MaxMessageSize is the largest message Encode writes and Decode
	// reads: a datagram with room for sealing.
	MaxMessageSize = MaxDatagramSize - SealOverhead
	// MaxDepth bounds the nesting of lists and dicts in a message.
	MaxDepth = 10
	// MaxElements bounds the number of values in a message.
	MaxElements = 8192
	// MaxTimeout bounds Message.Timeout.
	MaxTimeout = time.Hour
	// MaxDuration bounds the durations in Args (leases, delays,
	// intervals) and Message.Age.
	MaxDuration = 365 * 24 * time.Hour
	// JobInfoOverhead bounds what the encoding of a JobInfo in a list adds
	// to the lengths of its strings (keys, length prefixes, integers), and
	// ReplyOverhead what a response adds to the jobs it lists, but the
	// node's id: a node fills a dead-job listing up to MaxDatagramSize by
	// them. A job of the largest payload and names fits alone.
	JobInfoOverhead = 256
	ReplyOverhead   = 160
	// MaxBatchJobs bounds the jobs of an OpEnqueueBatch, so that its
	// reply fits a datagram whatever the ids it lists (up to
	// shard.MaxKeySize bytes each). A request must fit a datagram too:
	// BatchJobSize says what each job takes of it.
	MaxBatchJobs = 50
	// BatchOverhead bounds what an OpEnqueueBatch query adds to the
	// BatchJobSize of its jobs: the envelope, with a client id and proof of
	// their largest sizes.
	BatchOverhead = 512
	// MaxClientIDSize bounds Message.Client, in bytes. The cluster keeps
	// each client's id with the results of its writes; the Go client's
	// ids are 16 bytes.
	MaxClientIDSize = 64
)
