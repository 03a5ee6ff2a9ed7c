// Package wire defines the messages clients and nodes exchange, their
// Bencode codec, and the datagram transports that carry them.
//
// Every message is one bencoded dict in one datagram, in the spirit of KRPC
// (BitTorrent BEP 5):
//
//	query     d1:ad1:k5:hello1:v5:worlde1:c16:3f9ac2d1e0b4a7c61:ki7e1:q3:set1:si9e1:ti42e1:wi25e1:y1:qe
//	response  d1:li130e1:n2:n21:rd1:ni5e1:v5:worlde1:ti42e1:y1:re
//	error     d1:eli404e9:not founde1:li130e1:n2:n21:ti42e1:y1:ee
//	heartbeat d1:hd1:fli1ei2ee1:lli0ee1:mi1ee1:li130e1:n2:n11:y1:he
//
// t is the transaction id of one attempt, y the type, q the op, a its
// arguments, r the result, e an error as [code, message]. Every query also
// carries the client id c, the request's sequence number s (the same on
// every attempt), the client's acknowledgement floor k and how long it
// waits, w, in milliseconds; every reply and heartbeat carries the node n
// and its activity l. A reply from a follower that forwarded a write to
// its shard's leader also names that leader, ld (a dict of the node n and
// the shard s), so the client sends the shard's next writes there.
//
// The ops are listed once, in ops.go, with their rules: which change state
// (Op.Mutating), which count toward a node's load (Op.Loads), which slot
// serves them (Op.Slot), and what their arguments must be (CheckArgs,
// CheckQuery, which the client runs before it sends and the node when a
// query arrives). Each error Code means one thing (codes.go). Two ops save
// writes for jobs: OpEnqueueBatch carries up to MaxBatchJobs jobs of one
// shard in Args.Batch (a list of dicts b), and OpCompleteAcquire completes
// a job and leases the next of its shard, replying with it as an acquire
// does, or with no job. Nodes that predate them refuse them, changing
// nothing, with CodeUnknownOp.
//
// Decode is the boundary with the network and never trusts its input: it
// rejects datagrams over MaxDatagramSize, nesting over MaxDepth, more than
// MaxElements values, non-canonical Bencode, trailing bytes and fields of
// the wrong type, each with an error wrapping ErrMalformed or ErrTooLarge.
//
// Transports: UDP for production, SimNet for an in-process network with
// seeded drop, duplication, delay, reordering and partitions, and
// WithFaults to put any transport behind a lossy link.
package wire
