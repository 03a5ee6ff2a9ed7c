package server

import (
	"bufio"
	"encoding/gob"
	"fmt"
	"io"
	"net"
	"net/rpc"
	"sync"
	"time"

	"github.com/shoal-kv/shoal/shard"
)

// Node-to-node RPC is net/rpc's gob protocol, with the codecs below in
// place of net/rpc's own: they bound each message, and the server's closes
// a connection that sends nothing for peerIdleTimeout while no call of it
// runs.
const (
	// maxRPCRequestSize bounds one call: a forward of ops up to
	// entryMaxBytes (and one op over), or of forwardMaxGets keys.
	maxRPCRequestSize = entryMaxBytes + 1<<20
	// maxRPCReplySize bounds one reply: the largest are a dead-job
	// listing, maxDeadListing jobs with their payloads (6.2 MiB), and a
	// forwarded read of forwardMaxGets values (3.9 MiB).
	maxRPCReplySize = maxDeadListing*(shard.MaxValueSize+3*shard.MaxKeySize+1<<10) + 1<<20
	// peerWriteTimeout bounds writing one message to a peer: one that
	// reads nothing does not hold a goroutine for good.
	peerWriteTimeout = 10 * time.Second
)

// budgetReader fails every read once more than the budget set by reset
// has been read since: one message may not exceed it. A decoder reading
// through a buffer reads ahead into the next message; that counts against
// the message being read, so the bound is the budget plus the buffer.
type budgetReader struct {
	r    io.Reader
	left int64
	err  error
}

func (b *budgetReader) reset(budget int64) { b.left = budget }

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.left <= 0 {
		b.err = fmt.Errorf("%w: an RPC message too large", errMessageTooLarge)
		return 0, b.err
	}
	n, err := b.r.Read(p[:min(int64(len(p)), b.left)])
	b.left -= int64(n)
	return n, err
}

// serverCodec is the server side of a node-to-node RPC connection.
type serverCodec struct {
	conn net.Conn
	in   *budgetReader
	dec  *gob.Decoder
	out  *bufio.Writer
	enc  *gob.Encoder
	idle time.Duration

	mu sync.Mutex
	// calls counts the requests read and not yet answered: while any
	// runs, the connection is not idle.
	calls int
}

func newServerCodec(conn net.Conn, idle time.Duration) *serverCodec {
	in := &budgetReader{r: conn}
	out := bufio.NewWriter(conn)
	return &serverCodec{conn: conn, in: in, dec: gob.NewDecoder(in), out: out, enc: gob.NewEncoder(out), idle: idle}
}

// waitDeadline sets the deadline of the read waiting for the next request:
// idle from now if no call runs, none otherwise. Under mu.
func (c *serverCodec) waitDeadline() {
	var d time.Time
	if c.calls == 0 {
		d = time.Now().Add(c.idle)
	}
	_ = c.conn.SetReadDeadline(d)
}

func (c *serverCodec) ReadRequestHeader(r *rpc.Request) error {
	c.mu.Lock()
	c.waitDeadline()
	c.mu.Unlock()
	c.in.reset(maxRPCRequestSize)
	if err := c.dec.Decode(r); err != nil {
		return err
	}
	c.mu.Lock()
	c.calls++ // net/rpc answers every request whose header it read
	// The body follows the header at once.
	_ = c.conn.SetReadDeadline(time.Now().Add(c.idle))
	c.mu.Unlock()
	return nil
}

func (c *serverCodec) ReadRequestBody(body any) error { return c.dec.Decode(body) }

// WriteResponse is called by one goroutine at a time (net/rpc's sending
// lock).
func (c *serverCodec) WriteResponse(r *rpc.Response, body any) error {
	defer func() {
		c.mu.Lock()
		c.calls--
		c.waitDeadline()
		c.mu.Unlock()
	}()
	_ = c.conn.SetWriteDeadline(time.Now().Add(peerWriteTimeout))
	if err := c.enc.Encode(r); err != nil {
		c.conn.Close() // the stream is broken
		return err
	}
	if err := c.enc.Encode(body); err != nil {
		c.conn.Close()
		return err
	}
	return c.out.Flush()
}

func (c *serverCodec) Close() error { return c.conn.Close() }

// clientCodec is the dialing side of a node-to-node RPC connection.
type clientCodec struct {
	conn net.Conn
	in   *budgetReader
	dec  *gob.Decoder
	out  *bufio.Writer
	enc  *gob.Encoder
}

func newClientCodec(conn net.Conn) *clientCodec {
	in := &budgetReader{r: conn}
	out := bufio.NewWriter(conn)
	return &clientCodec{conn: conn, in: in, dec: gob.NewDecoder(in), out: out, enc: gob.NewEncoder(out)}
}

// WriteRequest is called by one goroutine at a time (net/rpc's request
// lock).
func (c *clientCodec) WriteRequest(r *rpc.Request, body any) error {
	_ = c.conn.SetWriteDeadline(time.Now().Add(peerWriteTimeout))
	if err := c.enc.Encode(r); err != nil {
		return err
	}
	if err := c.enc.Encode(body); err != nil {
		return err
	}
	return c.out.Flush()
}

func (c *clientCodec) ReadResponseHeader(r *rpc.Response) error {
	c.in.reset(maxRPCReplySize)
	return c.dec.Decode(r)
}

func (c *clientCodec) ReadResponseBody(body any) error { return c.dec.Decode(body) }

func (c *clientCodec) Close() error { return c.conn.Close() }
