package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/shard"
)

// All node-to-node traffic of a node shares one TCP listener. hashicorp/raft
// has no multi-raft support, so, as Consul and Nomad do, every connection
// opens with a preamble saying where it goes, and the accept loop hands it
// on: a raft stream to its shard's StreamLayer, an RPC connection to the
// node's RPC server.
const (
	preambleRaft byte = 'R' // followed by the shard id, 4 bytes big-endian
	preambleRPC  byte = 'C'
	// preambleTimeout bounds how long a new connection may take to say
	// what it is.
	preambleTimeout = 5 * time.Second
)

var errMuxClosed = errors.New("server: node listener closed")

// mux accepts node-to-node connections and routes them by preamble.
type mux struct {
	ln        net.Listener
	advertise advertisedAddr // the address peers reach this node at
	log       *slog.Logger
	serveRPC  func(net.Conn) // takes ownership of the connection

	mu       sync.Mutex
	shards   map[shard.ID]*streamLayer
	accepted map[*trackedConn]struct{}
	closed   bool
	wg       sync.WaitGroup
}

// newMux listens on listen and advertises advertise, the node's raft
// address in the spec, which peers dial.
func newMux(listen, advertise string, log *slog.Logger, serveRPC func(net.Conn)) (*mux, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	m := &mux{ln: ln, advertise: advertisedAddr(advertise), log: log, serveRPC: serveRPC,
		shards: make(map[shard.ID]*streamLayer), accepted: make(map[*trackedConn]struct{})}
	m.wg.Add(1)
	go m.acceptLoop()
	return m, nil
}

func (m *mux) acceptLoop() {
	defer m.wg.Done()
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				m.log.Error("accept failed; node-to-node listener stopped", "err", err)
			}
			return
		}
		tc := &trackedConn{Conn: conn, mux: m}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			conn.Close()
			return
		}
		m.accepted[tc] = struct{}{}
		m.wg.Add(1)
		m.mu.Unlock()
		go func() {
			defer m.wg.Done()
			m.route(tc)
		}()
	}
}

func (m *mux) route(conn *trackedConn) {
	var kind [1]byte
	_ = conn.SetReadDeadline(time.Now().Add(preambleTimeout))
	if _, err := io.ReadFull(conn, kind[:]); err != nil {
		conn.Close()
		return
	}
	switch kind[0] {
	case preambleRaft:
		var id [4]byte
		if _, err := io.ReadFull(conn, id[:]); err != nil {
			conn.Close()
			return
		}
		_ = conn.SetReadDeadline(time.Time{})
		m.mu.Lock()
		sl := m.shards[shard.ID(binary.BigEndian.Uint32(id[:]))]
		m.mu.Unlock()
		if sl == nil || !sl.deliver(conn) {
			conn.Close()
		}
	case preambleRPC:
		_ = conn.SetReadDeadline(time.Time{})
		m.serveRPC(conn)
	default:
		m.log.Warn("dropped a connection with an unknown preamble", "remote", conn.RemoteAddr(), "preamble", kind[0])
		conn.Close()
	}
}

// streamLayer returns the raft.StreamLayer of one shard on this node.
func (m *mux) streamLayer(id shard.ID) (*streamLayer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errMuxClosed
	}
	sl := &streamLayer{mux: m, id: id, conns: make(chan net.Conn), done: make(chan struct{}),
		live: make(map[*trackedConn]struct{})}
	m.shards[id] = sl
	return sl, nil
}

// dialContext opens a connection to another node's listener and writes
// preamble, within ctx.
func dialContext(ctx context.Context, addr string, preamble []byte) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	deadline := time.Now().Add(preambleTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetWriteDeadline(deadline)
	if _, err := conn.Write(preamble); err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetWriteDeadline(time.Time{})
	return conn, nil
}

// close stops accepting, closes every accepted connection still open (so
// that raft's and net/rpc's per-connection goroutines end), and waits for the
// accept loop and routing.
func (m *mux) close() error {
	err := m.ln.Close()
	m.mu.Lock()
	m.closed = true
	open := make([]*trackedConn, 0, len(m.accepted))
	for c := range m.accepted {
		open = append(open, c)
	}
	m.mu.Unlock()
	for _, c := range open {
		// Only the socket: whoever holds the connection sees its read
		// fail and closes it, which releases it (see trackedConn.Close).
		c.Conn.Close()
	}
	m.wg.Wait()
	return err
}

// trackedConn is an accepted connection the mux closes when the node stops,
// since whoever it was handed to may be blocked reading from it.
type trackedConn struct {
	net.Conn
	mux   *mux
	layer *streamLayer // the shard it was handed to, if any; under mux.mu
	once  sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.mux.mu.Lock()
		delete(c.mux.accepted, c)
		if c.layer != nil {
			delete(c.layer.live, c)
			c.layer.handlers.Done()
		}
		c.mux.mu.Unlock()
	})
	return c.Conn.Close()
}

// streamLayer is one shard's view of the node listener: connections with its
// preamble, and dialing out with it.
type streamLayer struct {
	mux   *mux
	id    shard.ID
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once

	// live holds the connections handed to raft that it has not closed
	// yet, and handlers counts them; both are under mux.mu (handlers' Add
	// and Done).
	live     map[*trackedConn]struct{}
	handlers sync.WaitGroup
}

var _ raft.StreamLayer = (*streamLayer)(nil)

// deliver hands an accepted connection to raft, or reports false once the
// layer is closed. From then on the connection counts as live until it is
// closed.
func (s *streamLayer) deliver(conn *trackedConn) bool {
	s.mux.mu.Lock()
	select {
	case <-s.done:
		// drain takes its list of live connections after done closes.
		s.mux.mu.Unlock()
		return false
	default:
	}
	conn.layer = s
	s.live[conn] = struct{}{}
	s.handlers.Add(1)
	s.mux.mu.Unlock()
	select {
	case s.conns <- conn:
		return true
	case <-s.done:
		return false
	}
}

// Accept waits for the next raft connection of this shard.
func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.done:
		return nil, net.ErrClosed
	}
}

// Close stops this shard's accepting; the node listener goes on.
func (s *streamLayer) Close() error {
	s.once.Do(func() {
		close(s.done)
		s.mux.mu.Lock()
		if s.mux.shards[s.id] == s {
			delete(s.mux.shards, s.id)
		}
		s.mux.mu.Unlock()
	})
	return nil
}

// drain closes the layer, ends every connection it handed to raft, and waits
// until raft's handlers have let go of them. NetworkTransport does not wait
// for its connection handlers when it closes, and one may be in the middle
// of a heartbeat, which can write the term to the stable store: closing the
// store under it makes raft panic.
func (s *streamLayer) drain() {
	s.Close()
	s.mux.mu.Lock()
	live := make([]*trackedConn, 0, len(s.live))
	for c := range s.live {
		live = append(live, c)
	}
	s.mux.mu.Unlock()
	for _, c := range live {
		// The handler's read fails; its own Close releases the connection.
		c.Conn.Close()
	}
	s.handlers.Wait()
}

// Addr returns the address peers reach the node at.
func (s *streamLayer) Addr() net.Addr { return s.mux.advertise }

// advertisedAddr is a TCP address as peers dial it.
type advertisedAddr string

func (a advertisedAddr) Network() string { return "tcp" }
func (a advertisedAddr) String() string  { return string(a) }

// Dial connects to the same shard on the node at address.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	var p [5]byte
	p[0] = preambleRaft
	binary.BigEndian.PutUint32(p[1:], uint32(s.id))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return dialContext(ctx, string(address), p[:])
}
