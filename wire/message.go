package wire

import (
	"fmt"
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

// Op names a query (KRPC's "q").
type Op string

// The ops a node serves.
const (
	// OpGet reads a key; Args.Stale asks for a local read.
	OpGet Op = "get"
	// OpSet writes a key.
	OpSet Op = "set"
	// OpDelete removes a key.
	OpDelete Op = "del"
	// OpCompareAndSet writes a key if its version is Args.Version.
	OpCompareAndSet Op = "cas"
	// OpTopology asks for the cluster's nodes and shard map.
	OpTopology Op = "topo"
	// OpPing does nothing but keep the client subscribed to heartbeats.
	OpPing Op = "ping"
	// OpStatus asks a node for its raft state per shard.
	OpStatus Op = "status"

	// OpEnqueue creates job Args.JobID of Args.Topic with payload
	// Args.Value.
	OpEnqueue Op = "enq"
	// OpAcquire leases a ready job of Args.Topic for Args.Lease from one
	// of Args.Shards (all the node holds if empty), waiting up to
	// Args.Wait for one.
	OpAcquire Op = "acq"
	// OpExtend, OpComplete, OpFail and OpRelease act on job Args.JobID
	// under lease Args.Token.
	OpExtend   Op = "ext"
	OpComplete Op = "done"
	OpFail     Op = "fail"
	OpRelease  Op = "rel"
	// OpRequeue queues dead job Args.JobID again.
	OpRequeue Op = "requeue"
	// OpEvery registers the schedule (Args.Topic, Args.Unique) making a
	// job every Args.Interval; OpUnevery removes it.
	OpEvery   Op = "every"
	OpUnevery Op = "unevery"
	// OpJobStats counts Args.Topic's jobs by state on shard Args.Shards[0].
	OpJobStats Op = "jstats"
	// OpDeadJobs lists up to Args.Limit dead jobs of Args.Topic on shard
	// Args.Shards[0].
	OpDeadJobs Op = "dead"
)

// Mutating reports whether op changes state, so that it must be applied at
// most once and keeps its sequence number unacknowledged until answered.
func (op Op) Mutating() bool {
	switch op {
	case OpSet, OpDelete, OpCompareAndSet, OpEnqueue, OpAcquire, OpExtend, OpComplete,
		OpFail, OpRelease, OpRequeue, OpEvery, OpUnevery:
		return true
	}
	return false
}

// Loads reports whether a request of op counts toward a node's load, the
// requests in progress it reports: every request but the ones that wait at
// the node by design (an acquire's long poll) or cost next to nothing
// (ping, topology, status).
func (op Op) Loads() bool {
	switch op {
	case OpAcquire:
		return false
	case OpGet, OpJobStats, OpDeadJobs:
		return true
	}
	return op.Mutating()
}

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
	// Timeout is how long the client waits for this attempt; the node
	// gives up on the request after it. Zero means the node's default.
	Timeout time.Duration
	Args    Args

	// Responses, errors and heartbeats: the sending node and its activity,
	// the client requests in progress at it averaged over its recent past,
	// in thousandths of a request.
	Node     string
	Activity int64

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
	Wait  time.Duration
	Limit int
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
	// Job is the job an op acted on: the grant of an acquire, the new
	// lease of an extend, the id of an enqueue (that of the live job with
	// the same uniqueness key, if there was one).
	Job *JobInfo
	// Jobs answers OpDeadJobs; Counts answers OpJobStats.
	Jobs   []JobInfo
	Counts *shard.JobCounts
}

// JobInfo describes a job.
type JobInfo struct {
	ID      string
	Topic   string
	Payload string
	Attempt int
	Token   uint64
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

// Code classifies an error reply. 201 to 204 are KRPC's; the rest borrow
// the meaning of the HTTP status with the same number.
type Code int

// The error codes.
const (
	CodeGeneric        Code = 201 // any other failure
	CodeServer         Code = 202 // a fault inside the node
	CodeProtocol       Code = 203 // malformed message or wrong argument types
	CodeUnknownOp      Code = 204 // the op is not one this node serves
	CodeBadRequest     Code = 400 // well formed, but the arguments are invalid
	CodeNotFound       Code = 404 // the key does not exist
	CodeConflict       Code = 409 // compare-and-set found another version
	CodeLeaseLost      Code = 423 // the token is not the job's live lease (Locked)
	CodeAcked          Code = 410 // the client already acknowledged this sequence number
	CodeTooLarge       Code = 413 // key, value or message over the limits
	CodeWrongShard     Code = 421 // the node holds no replica of the key's shard
	CodeTooManyPending Code = 429 // the client has too many unacknowledged requests
	CodeUnavailable    Code = 503 // no leader, or the node ran out of time
)

// Error is an error reply: KRPC's [code, message].
type Error struct {
	Code    Code
	Message string
}

// Error formats the reply as "code message".
func (e *Error) Error() string {
	return fmt.Sprintf("%d %s", e.Code, e.Message)
}

// Limits of the protocol. A value of shard.MaxValueSize with a key of
// shard.MaxKeySize fits one datagram with room for the envelope.
const (
	// MaxDatagramSize is the largest datagram a node or client sends or
	// accepts: the most an IPv4 UDP datagram can carry. Over a real network
	// anything above the path MTU (about 1,400 bytes) is fragmented, and the
	// loss of one fragment loses the datagram.
	MaxDatagramSize = 65507
	// MaxDepth bounds the nesting of lists and dicts in a message.
	MaxDepth = 10
	// MaxElements bounds the number of values in a message.
	MaxElements = 8192
	// MaxTimeout bounds Message.Timeout.
	MaxTimeout = time.Hour
	// MaxDuration bounds the durations in Args: leases, delays, intervals.
	MaxDuration = 365 * 24 * time.Hour
)
