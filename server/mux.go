package server

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/shoal-kv/shoal/server/certs"
	"github.com/shoal-kv/shoal/shard"
)

// All node-to-node traffic of a node shares one TCP listener. hashicorp/raft
// has no multi-raft support, so, as Consul and Nomad do, every connection
// opens (inside TLS, see peertls.go) with a preamble saying where it goes,
// and the accept loop hands it on: a raft stream to its shard's
// StreamLayer, an RPC connection to the node's RPC server.
const (
	preambleRaft byte = 'R' // followed by the shard id, 4 bytes big-endian
	preambleRPC  byte = 'C'
)

// Bounds on what peers, and anyone reaching the node listener, may hold.
// The listener never stops while the node runs: an accept that fails (out
// of file descriptors, EMFILE or ENFILE, or any other error) is retried
// after a pause growing from acceptMinDelay to acceptMaxDelay.
const (
	// handshakeTimeout bounds the TLS handshake and the preamble of a new
	// connection, and a dial of one.
	handshakeTimeout = 5 * time.Second
	// maxPeerConns bounds the node-to-node connections accepted and open
	// at once; past it a new one is closed at once. A node's peers hold
	// about five connections per shard they share with it (raft's
	// pipeline and pool of three, one snapshot) and one for RPC.
	maxPeerConns = 4096
	// maxPendingConns bounds the accepted connections still in their
	// handshake: connections nobody authenticated yet cannot take the
	// room of the peers'. Past it, a new connection takes the place of the
	// one pending longest, which is closed: a peer's handshake takes
	// milliseconds, so connections held idle to fill the room (for up to
	// handshakeTimeout each) make room for it rather than keep it out.
	maxPendingConns = 256
	// peerIdleTimeout is how long an accepted connection may send nothing,
	// while the node waits for it, before the node closes it. Raft's
	// heartbeats (a tenth of the heartbeat timeout apart, twice the
	// timeout when quiesced) and appends (at most twice CommitTimeout
	// apart) keep a healthy group's connections far busier; the dialing
	// side replaces a connection idle for half this long before using it
	// again (raftClientConn, peers), so it never sends on one being closed.
	peerIdleTimeout = 2 * time.Minute

	acceptMinDelay = 5 * time.Millisecond
	acceptMaxDelay = time.Second
)

var errMuxClosed = errors.New("server: node listener closed")

// muxConfig configures a mux.
type muxConfig struct {
	// listen is the address to bind; advertise the node's raft address in
	// the spec, which peers dial.
	listen, advertise string
	log               *slog.Logger
	// serveRPC takes ownership of an RPC connection from node peer ("" if
	// insecure), to be closed once idle for idle (the mux's).
	serveRPC func(conn net.Conn, peer string, idle time.Duration)
	// tls accepts peers; nil runs insecure, on plain TCP.
	tls *tls.Config
	// dialer reaches the other nodes.
	dialer *dialer
	// idle is peerIdleTimeout, shorter in tests.
	idle time.Duration
	// mayCarry reports whether a node may open raft streams of a group:
	// whether it holds one of its replicas or is being given one.
	mayCarry func(id shard.ID, node string) bool
}

// mux accepts node-to-node connections and routes them by preamble.
type mux struct {
	muxConfig
	ln   net.Listener
	done chan struct{} // closed by close

	mu       sync.Mutex
	shards   map[shard.ID]*streamLayer
	accepted map[*trackedConn]struct{}
	pending  []*trackedConn // accepted connections in their handshake, oldest first
	closed   bool
	wg       sync.WaitGroup
}

// newMux listens as cfg says.
func newMux(cfg muxConfig) (*mux, error) {
	if cfg.idle <= 0 {
		cfg.idle = peerIdleTimeout
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	m := &mux{muxConfig: cfg, ln: ln, done: make(chan struct{}),
		shards: make(map[shard.ID]*streamLayer), accepted: make(map[*trackedConn]struct{})}
	m.wg.Add(1)
	go m.acceptLoop()
	return m, nil
}

func (m *mux) acceptLoop() {
	defer m.wg.Done()
	var delay time.Duration
	failures := 0 // in a row; the first and the recovery are logged
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if failures++; failures == 1 {
				m.log.Warn("accept failing; retrying with backoff", "err", err)
			}
			delay = min(max(2*delay, acceptMinDelay), acceptMaxDelay)
			select {
			case <-m.done:
				return
			case <-time.After(delay):
			}
			continue
		}
		if failures > 0 {
			m.log.Info("accept recovered", "failures", failures)
		}
		delay, failures = 0, 0
		m.admit(conn)
	}
}

// admit starts the handshake of a new connection, or closes it at once if
// the node holds as many as it may.
func (m *mux) admit(conn net.Conn) {
	tc := &trackedConn{Conn: conn, raw: conn, mux: m}
	m.mu.Lock()
	if m.closed || len(m.accepted) >= maxPeerConns {
		m.mu.Unlock()
		conn.Close()
		return
	}
	var evicted *trackedConn
	if len(m.pending) >= maxPendingConns {
		evicted, m.pending = m.pending[0], m.pending[1:]
	}
	m.accepted[tc] = struct{}{}
	m.pending = append(m.pending, tc)
	m.wg.Add(1)
	m.mu.Unlock()
	if evicted != nil {
		evicted.raw.Close() // its handshake fails, and its goroutine ends
	}
	go func() {
		defer m.wg.Done()
		m.route(tc)
	}()
}

// handshake authenticates the peer of a new connection, within
// handshakeTimeout, and reads its preamble's kind. It returns the peer's
// node id ("" when insecure).
func (m *mux) handshake(conn *trackedConn) (peer string, kind byte, err error) {
	defer func() {
		m.mu.Lock()
		if i := slices.Index(m.pending, conn); i >= 0 {
			m.pending = slices.Delete(m.pending, i, i+1)
		}
		m.mu.Unlock()
	}()
	_ = conn.raw.SetDeadline(time.Now().Add(handshakeTimeout))
	if m.tls != nil {
		tc := tls.Server(conn.raw, m.tls)
		if err := tc.Handshake(); err != nil {
			return "", 0, err
		}
		if peer, err = certs.NodeID(tc.ConnectionState().PeerCertificates[0]); err != nil {
			return "", 0, err
		}
		conn.Conn = tc
	}
	var b [1]byte
	if _, err := io.ReadFull(conn.Conn, b[:]); err != nil {
		return "", 0, err
	}
	return peer, b[0], nil
}

func (m *mux) route(conn *trackedConn) {
	peer, kind, err := m.handshake(conn)
	if err != nil {
		m.log.Debug("dropped a connection in its handshake", "remote", conn.RemoteAddr(), "err", err)
		conn.Close()
		return
	}
	m.mu.Lock()
	conn.peer = peer
	m.mu.Unlock()
	switch kind {
	case preambleRaft:
		var id [4]byte
		if _, err := io.ReadFull(conn.Conn, id[:]); err != nil {
			conn.Close()
			return
		}
		_ = conn.raw.SetDeadline(time.Time{})
		m.mu.Lock()
		sl := m.shards[shard.ID(binary.BigEndian.Uint32(id[:]))]
		m.mu.Unlock()
		if sl != nil && m.tls != nil && !m.mayCarry(sl.id, peer) {
			m.log.Warn("refused a raft stream from a node holding no replica of its group", "peer", peer, "group", groupName(sl.id))
			sl = nil
		}
		if sl == nil {
			conn.Close()
			return
		}
		conn.Conn = newRaftConn(conn.Conn, m.idle)
		if !sl.deliver(conn) {
			conn.Close()
		}
	case preambleRPC:
		_ = conn.raw.SetDeadline(time.Time{})
		m.serveRPC(conn, peer, m.idle)
	default:
		m.log.Warn("dropped a connection with an unknown preamble", "remote", conn.RemoteAddr(), "peer", peer, "preamble", kind)
		conn.Close()
	}
}

// streamLayer returns the raft.StreamLayer of one group on this node: only
// the nodes mayCarry names may open its streams.
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

// closePeer closes the accepted connections of node peer: a node removed
// from the cluster keeps none of what it was allowed as a member.
func (m *mux) closePeer(peer string) {
	m.mu.Lock()
	var open []*trackedConn
	for c := range m.accepted {
		if c.peer == peer {
			open = append(open, c)
		}
	}
	m.mu.Unlock()
	for _, c := range open {
		c.raw.Close() // its holder's read fails, and it closes it
	}
}

// close stops accepting, closes every accepted connection still open (so
// that raft's and net/rpc's per-connection goroutines end), and waits for the
// accept loop and routing.
func (m *mux) close() error {
	close(m.done)
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
		c.raw.Close()
	}
	m.wg.Wait()
	return err
}

// trackedConn is an accepted connection the mux closes when the node stops,
// since whoever it was handed to may be blocked reading from it.
type trackedConn struct {
	net.Conn          // what the holder reads and writes: TLS over raw
	raw      net.Conn // the TCP connection
	mux      *mux
	layer    *streamLayer // the shard it was handed to, if any; under mux.mu
	// peer is the node at the other end, once its handshake is done
	// ("" while it runs, or when insecure); under mux.mu.
	peer string
	once sync.Once
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
		c.raw.Close()
	}
	s.handlers.Wait()
}

// Addr returns the address peers reach the node at.
func (s *streamLayer) Addr() net.Addr { return advertisedAddr(s.mux.advertise) }

// advertisedAddr is a TCP address as peers dial it.
type advertisedAddr string

func (a advertisedAddr) Network() string { return "tcp" }
func (a advertisedAddr) String() string  { return string(a) }

// Dial connects to the same shard on the node at address.
func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	var p [5]byte
	p[0] = preambleRaft
	binary.BigEndian.PutUint32(p[1:], uint32(s.id))
	dial := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return s.mux.dialer.dial(ctx, string(address), p[:])
	}
	conn, err := dial()
	if err != nil {
		return nil, err
	}
	return newRaftClientConn(conn, dial, s.mux.idle/2), nil
}
