package server

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Bounds on one node-to-node message. Raft's messages are msgpack and
// net/rpc's are gob; neither decoder bounds what it reads, but both
// allocate as the bytes arrive, so bounding the bytes a connection may
// read bounds the memory a message takes.
const (
	// maxRaftEntries is raft's MaxAppendEntries: the log entries one
	// append carries at most (raft's default is 64).
	maxRaftEntries = 16
	// maxRaftRequestSize bounds the bytes a raft connection may read
	// between two of its responses: one request (an append of up to
	// maxRaftEntries entries of entryMaxBytes and one op over, 1 MiB +
	// 64 KiB at most), with room for what its reader buffered of the next
	// (raft reads through a 256 KiB buffer). A snapshot's data is the one
	// exception, see raftConn.
	maxRaftRequestSize = maxRaftEntries*(entryMaxBytes+128<<10) + 1<<20
	// maxRaftResponseSize bounds the bytes a dialed raft connection may
	// read between two of its requests: raft's responses are a few dozen
	// bytes each.
	maxRaftResponseSize = 1 << 20
	// rpcInstallSnapshot is the first byte of a raft InstallSnapshot
	// request on the wire (hashicorp/raft's net_transport.go), which is
	// followed by the snapshot's data.
	rpcInstallSnapshot = 2
)

// errMessageTooLarge: a peer sent a message over the bounds above; the
// connection is closed.
var errMessageTooLarge = errors.New("server: node-to-node message too large")

// raftConn is an accepted raft connection. raft's handler reads a request
// and writes its response, one at a time, from one goroutine. A peer that
// sends nothing for idle while the handler waits is dropped, and a request
// may not exceed limit bytes. The data of a snapshot follows its request
// and may be of any size: raft streams it to disk. A request is taken for
// an InstallSnapshot when the first byte read after a response (or at the
// start) is rpcInstallSnapshot: raft sends that request only on a
// connection whose earlier responses it has read, so the handler's buffer
// is empty and its next read starts at the request's first byte.
type raftConn struct {
	net.Conn
	idle  time.Duration
	limit int64
	// read counts the bytes read since the last write; atStart says the
	// next byte read begins a request, and unbounded that the request
	// being read installs a snapshot.
	read      int64
	atStart   bool
	unbounded bool
}

func newRaftConn(conn net.Conn, idle time.Duration) *raftConn {
	return &raftConn{Conn: conn, idle: idle, limit: maxRaftRequestSize, atStart: true}
}

func (c *raftConn) Read(b []byte) (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	if !c.unbounded {
		room := c.limit - c.read
		if room <= 0 {
			return 0, fmt.Errorf("%w: a raft request over %d bytes", errMessageTooLarge, c.limit)
		}
		b = b[:min(int64(len(b)), room)]
	}
	n, err := c.Conn.Read(b)
	if n > 0 && c.atStart {
		c.atStart = false
		c.unbounded = b[0] == rpcInstallSnapshot
	}
	c.read += int64(n)
	return n, err
}

func (c *raftConn) Write(b []byte) (int, error) {
	c.read, c.atStart, c.unbounded = 0, true, false
	return c.Conn.Write(b)
}

// raftClientConn is a raft connection this node dialed. raft pools such
// connections and may leave one unused for long (one that carried votes
// waits for the next election), while the peer closes a connection idle
// for peerIdleTimeout. So before a write, a connection unused for
// redialAfter, with no read waiting on it, is replaced by a new one,
// transparently: raft's requests and responses alternate, so such a
// connection is between two of them, with nothing in flight. It also
// bounds the bytes read between two writes (maxRaftResponseSize).
type raftClientConn struct {
	dial        func() (net.Conn, error)
	redialAfter time.Duration

	mu      sync.Mutex
	conn    net.Conn
	used    time.Time // the end of the last read or write
	reading int       // reads in progress
	read    int64     // bytes read since the last write
	closed  bool
	// The deadlines set, for a new connection.
	readDeadline, writeDeadline time.Time
}

func newRaftClientConn(conn net.Conn, dial func() (net.Conn, error), redialAfter time.Duration) *raftClientConn {
	return &raftClientConn{conn: conn, dial: dial, redialAfter: redialAfter, used: time.Now()}
}

func (c *raftClientConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	room := maxRaftResponseSize - c.read
	if room <= 0 {
		c.mu.Unlock()
		return 0, fmt.Errorf("%w: raft responses over %d bytes", errMessageTooLarge, maxRaftResponseSize)
	}
	conn := c.conn
	c.reading++
	c.mu.Unlock()
	n, err := conn.Read(b[:min(int64(len(b)), room)])
	c.mu.Lock()
	c.reading--
	c.read += int64(n)
	c.used = time.Now()
	c.mu.Unlock()
	return n, err
}

func (c *raftClientConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	stale := c.reading == 0 && !c.closed && time.Since(c.used) > c.redialAfter
	c.mu.Unlock()
	if stale {
		fresh, err := c.dial()
		if err != nil {
			return 0, err
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			fresh.Close()
			return 0, net.ErrClosed
		}
		old := c.conn
		c.conn = fresh
		_ = fresh.SetReadDeadline(c.readDeadline)
		_ = fresh.SetWriteDeadline(c.writeDeadline)
		c.mu.Unlock()
		old.Close()
	}
	c.mu.Lock()
	conn := c.conn
	c.read = 0
	c.mu.Unlock()
	n, err := conn.Write(b)
	c.mu.Lock()
	c.used = time.Now()
	c.mu.Unlock()
	return n, err
}

func (c *raftClientConn) Close() error {
	c.mu.Lock()
	c.closed = true
	conn := c.conn
	c.mu.Unlock()
	return conn.Close()
}

func (c *raftClientConn) current() net.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn
}

func (c *raftClientConn) LocalAddr() net.Addr  { return c.current().LocalAddr() }
func (c *raftClientConn) RemoteAddr() net.Addr { return c.current().RemoteAddr() }

func (c *raftClientConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline, c.writeDeadline = t, t
	return c.conn.SetDeadline(t)
}

func (c *raftClientConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline = t
	return c.conn.SetReadDeadline(t)
}

func (c *raftClientConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writeDeadline = t
	return c.conn.SetWriteDeadline(t)
}
