package server_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/certs"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/wire"
)

// sealedWith returns m encoded and sealed with keys as a client would for
// the node at address to, at the time now returns.
func sealedWith(t *testing.T, keys *wire.Keyring, now func() time.Time, to netip.AddrPort, m *wire.Message) []byte {
	t.Helper()
	b, err := wire.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	cp := &capture{}
	s := wire.Seal(cp, keys, wire.ClientSide)
	s.SetClock(now)
	if err := s.Send(b, to); err != nil {
		t.Fatal(err)
	}
	return cp.last
}

// capture is a Transport that keeps the last datagram sent.
type capture struct{ last []byte }

func (c *capture) LocalAddr() netip.AddrPort { return netip.MustParseAddrPort("127.0.0.1:9") }
func (c *capture) Send(b []byte, _ netip.AddrPort) error {
	c.last = append([]byte(nil), b...)
	return nil
}
func (c *capture) Close() error { return nil }
func (c *capture) Receive([]byte) (int, netip.AddrPort, time.Time, error) {
	return 0, netip.AddrPort{}, time.Time{}, net.ErrClosed
}

// A node answers nothing that is not sealed with the cluster's secret
// within the replay window, and applies none of it: not a plain query, not
// one sealed with another secret, not a write captured and sent again after
// the window.
func TestUnauthenticatedDatagramsGetNoReply(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 3, Raft: failoverTiming})
	attacker, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	other, err := wire.ParseKeyring(wire.NewSecret())
	if err != nil {
		t.Fatal(err)
	}
	id := wire.NewClientIdentity()
	set := &wire.Message{Type: wire.TypeQuery, TxID: 7, Op: wire.OpSet, Client: id.ID, Proof: id.Proof, Seq: 1, Ack: 1,
		Args: wire.Args{Key: "replayed", Value: "v"}}
	ping := &wire.Message{Type: wire.TypeQuery, TxID: 8, Op: wire.OpPing}
	plain, err := wire.Encode(ping)
	if err != nil {
		t.Fatal(err)
	}
	captured := func() time.Time { return time.Now().Add(-wire.ReplayWindow - time.Second) }
	// Each sealed one is sealed for the node it is sent to, so that
	// nothing but what the test means fails it.
	datagrams := func(to netip.AddrPort) [][]byte {
		return [][]byte{
			plain,
			sealedWith(t, other, time.Now, to, ping),
			sealedWith(t, other, time.Now, to, set),
			sealedWith(t, c.Secret(), captured, to, set),
			[]byte("garbage"),
		}
	}
	const kinds = 5
	before := map[string]uint64{}
	for _, n := range c.Spec().Nodes {
		before[n.ID] = c.Node(n.ID).Counters().Unauthenticated
		to, _ := wire.ParseAddr(n.Client)
		for _, d := range datagrams(to) {
			if _, err := attacker.WriteToUDPAddrPort(d, to); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, n := range c.Spec().Nodes {
		servertest.WaitFor(t, 5*time.Second, "the node dropped every datagram", func() bool {
			return c.Node(n.ID).Counters().Unauthenticated-before[n.ID] >= kinds
		})
		// The node handles datagrams in order: once it answered a sealed
		// ping sent after them, it would have answered them too.
		request(t, c, n.Client, &wire.Message{Type: wire.TypeQuery, Op: wire.OpPing})
	}
	// Nor did it take the attacker for a client to heartbeat.
	attacker.SetReadDeadline(time.Now().Add(3 * server.DefaultHeartbeatInterval))
	buf := make([]byte, wire.MaxDatagramSize+1)
	if n, from, err := attacker.ReadFromUDPAddrPort(buf); err == nil {
		t.Errorf("a node answered an unauthenticated datagram: %d bytes from %v", n, from)
	}
	cl := newClient(t, c, client.Config{})
	if _, err := cl.Get(context.Background(), "replayed"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("get of the key of the replayed write: %v, want ErrNotFound", err)
	}
}

// A client takes heartbeats only sealed with the cluster's secret: forged
// ones telling it that every node but one is swamped move nothing. In an
// insecure cluster the same forgery works, which shows that the test can
// tell.
func TestForgedHeartbeatsAreIgnored(t *testing.T) {
	for _, insecure := range []bool{true, false} {
		c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 3, Raft: failoverTiming, Insecure: insecure})
		u, err := wire.ListenUDP("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cl := newClient(t, c, client.Config{Transport: u})
		attacker, err := wire.ListenUDP("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		forge := func() {
			for _, n := range c.Spec().Nodes[1:] {
				hb, err := wire.Encode(&wire.Message{Type: wire.TypeHeartbeat, Node: n.ID, Activity: 1e9,
					Heartbeat: wire.Heartbeat{MapVersion: c.Map().Version}})
				if err != nil {
					t.Fatal(err)
				}
				if err := attacker.Send(hb, u.LocalAddr()); err != nil {
					t.Fatal(err)
				}
			}
		}
		swamped := func() bool {
			for _, n := range cl.Nodes() {
				if n.ID != c.Spec().Nodes[0].ID && n.Activity > 1e5 {
					return true
				}
			}
			return false
		}
		if insecure {
			servertest.WaitFor(t, 5*time.Second, "the forged heartbeats taken", func() bool { forge(); return swamped() })
		} else {
			forge()
			servertest.WaitFor(t, 5*time.Second, "the forged heartbeats dropped", func() bool {
				return cl.Counters().Unauthenticated >= uint64(len(c.Spec().Nodes)-1)
			})
			if swamped() {
				t.Errorf("a forged heartbeat moved the client's view: %+v", cl.Nodes())
			}
		}
		attacker.Close()
	}
}

// No one but a client can act under its id: a query naming it without its
// proof, or with another's, is refused (403, client.ErrForbidden) whether
// it would advance the session (a sequence number and acknowledgement far
// ahead) or read it (a retry of the client's own write), and the client
// goes on writing as before.
func TestSessionIsItsClientsOwn(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 3, Raft: failoverTiming})
	ctx := context.Background()
	victim := newClient(t, c, client.Config{})
	if _, err := victim.Set(ctx, "k", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	thief := wire.NewClientIdentity()
	addr := clientAddr(c, leader(t, c, 0).ID())
	for _, m := range []*wire.Message{
		{Op: wire.OpSet, Client: victim.ID(), Proof: thief.Proof, Seq: 1 << 62, Ack: 1 << 62, Args: wire.Args{Key: "k", Value: "x"}},
		{Op: wire.OpSet, Client: victim.ID(), Proof: thief.Proof, Seq: 1, Ack: 1, Args: wire.Args{Key: "k", Value: "x"}},
		{Op: wire.OpGet, Client: victim.ID(), Proof: thief.Proof, Args: wire.Args{Key: "k"}},
	} {
		m.Type = wire.TypeQuery
		if r := request(t, c, addr, m); r.Err == nil || r.Err.Code != wire.CodeForbidden {
			t.Errorf("%s as the victim with another proof: %+v %+v, want %d", m.Op, r.Result, r.Err, wire.CodeForbidden)
		}
	}
	noProof, err := wire.Encode(&wire.Message{Type: wire.TypeQuery, TxID: 9, Op: wire.OpSet, Client: victim.ID(),
		Seq: 1 << 62, Ack: 1 << 62, Args: wire.Args{Key: "k", Value: "x"}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := exchange(c, addr, noProof, 3, func(r wire.Message) bool { return r.TxID == 9 })
	if err != nil || r.Err == nil || r.Err.Code != wire.CodeForbidden {
		t.Errorf("set as the victim without a proof: %+v, %v", r.Err, err)
	}
	// The thief under its own id is served: the refusals above were for
	// the id, not the request.
	own := request(t, c, addr, &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet, Client: thief.ID, Proof: thief.Proof,
		Seq: 1, Ack: 1, Args: wire.Args{Key: "t", Value: "x"}})
	if own.Type != wire.TypeResponse {
		t.Errorf("set under the thief's own id: %+v", own.Err)
	}
	for i := range 3 {
		v := []byte{'w', byte('0' + i)}
		if _, err := victim.Set(ctx, "k", v); err != nil {
			t.Fatalf("the victim's write %d after the attempts: %v", i, err)
		}
		if it, err := victim.Get(ctx, "k"); err != nil || string(it.Value) != string(v) {
			t.Fatalf("the victim reads %q, %v; want %q", it.Value, err, v)
		}
	}
}

// newKeyring returns a keyring of a new secret.
func newKeyring(t testing.TB) *wire.Keyring {
	t.Helper()
	k, err := wire.ParseKeyring(wire.NewSecret())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A node starts only with the cluster's secret and a certificate, or when
// told to run insecure.
func TestStartNeedsTheClustersSecret(t *testing.T) {
	spec, err := server.LocalSpec(1, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := wire.ParseKeyring(wire.NewSecret())
	if err != nil {
		t.Fatal(err)
	}
	other, err := wire.ParseKeyring(wire.NewSecret())
	if err != nil {
		t.Fatal(err)
	}
	spec.SecretIDs = keys.IDs()
	ca, err := certs.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	creds, err := servertest.Credentials(ca, spec)
	if err != nil {
		t.Fatal(err)
	}
	start := func(cfg server.Config) error {
		cfg.ID, cfg.DataDir, cfg.Spec, cfg.Logger = "n1", t.TempDir(), spec, servertest.TestLogger(t)
		n, err := server.Start(context.Background(), cfg)
		if err == nil {
			n.Close()
		}
		return err
	}
	if err := start(server.Config{PeerTLS: creds["n1"]}); !errors.Is(err, server.ErrNoCredentials) {
		t.Errorf("no secret: %v, want ErrNoCredentials", err)
	}
	if err := start(server.Config{Secret: keys}); !errors.Is(err, server.ErrNoCredentials) {
		t.Errorf("no certificate: %v, want ErrNoCredentials", err)
	}
	if err := start(server.Config{Secret: other, PeerTLS: creds["n1"]}); !errors.Is(err, wire.ErrAuth) {
		t.Errorf("a secret the spec does not list: %v, want ErrAuth", err)
	}
	if err := start(server.Config{Secret: keys, PeerTLS: creds["n1"]}); err != nil {
		t.Errorf("the cluster's credentials: %v", err)
	}
	if err := start(server.Config{Insecure: true}); err != nil {
		t.Errorf("insecure: %v", err)
	}
}

// A datagram sent again within the replay window is dropped too: a query
// captured once draws one reply, however often it is replayed, to
// whichever node: it names the node it was sealed for.
func TestReplayedQueryAnsweredOnce(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 3, Raft: failoverTiming})
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	opener := wire.Seal(&udpConn{u}, c.Secret(), wire.ClientSide)
	to, _ := wire.ParseAddr(clientAddr(c, "n1"))
	ping := sealedWith(t, c.Secret(), time.Now, to, &wire.Message{Type: wire.TypeQuery, TxID: 5, Op: wire.OpPing})
	before := map[string]uint64{}
	for _, n := range c.Spec().Nodes {
		before[n.ID] = c.Node(n.ID).Counters().Unauthenticated
	}
	for range 3 {
		for _, n := range c.Spec().Nodes {
			addr, _ := wire.ParseAddr(n.Client)
			if _, err := u.WriteToUDPAddrPort(ping, addr); err != nil {
				t.Fatal(err)
			}
		}
	}
	// n1 drops the two copies, the others all three.
	for _, n := range c.Spec().Nodes {
		want := uint64(3)
		if n.ID == "n1" {
			want = 2
		}
		servertest.WaitFor(t, 5*time.Second, n.ID+" dropping the copies", func() bool {
			return c.Node(n.ID).Counters().Unauthenticated-before[n.ID] >= want
		})
	}
	replies := 0
	buf := make([]byte, wire.MaxDatagramSize+1)
	u.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	for {
		size, _, _, err := opener.Receive(buf)
		if err != nil {
			break
		}
		if m, err := wire.Decode(buf[:size]); err == nil && m.Type == wire.TypeResponse && m.TxID == 5 {
			replies++
		}
	}
	if replies != 1 {
		t.Errorf("%d replies to a query sent 3 times to each of 3 nodes, want 1", replies)
	}
}

// udpConn is a Transport over a socket the test set deadlines on.
type udpConn struct{ *net.UDPConn }

func (u *udpConn) LocalAddr() netip.AddrPort { return u.UDPConn.LocalAddr().(*net.UDPAddr).AddrPort() }
func (u *udpConn) Send(b []byte, to netip.AddrPort) error {
	_, err := u.WriteToUDPAddrPort(b, to)
	return err
}
func (u *udpConn) Receive(buf []byte) (int, netip.AddrPort, time.Time, error) {
	n, from, err := u.ReadFromUDPAddrPort(buf)
	return n, from, time.Now(), err
}

// A flood of forged datagrams (plain queries, and queries sealed with
// another secret), at several thousand a second, neither slows a
// well-behaved client much nor grows the nodes: each is dropped where it
// fails to open, before anything is kept of it.
func TestForgedFloodDoesNotStarveOthers(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 3, Shards: 1, Replicas: 3})
	target := c.Node("n1")
	rc := newRawClient(t, c, clientAddr(c, "n1"))
	var seq uint64
	quiet := setGetLatencies(t, rc, "good", &seq, 100, func() bool { return false })

	other, err := wire.ParseKeyring(wire.NewSecret())
	if err != nil {
		t.Fatal(err)
	}
	to, _ := wire.ParseAddr(clientAddr(c, "n1"))
	// Two collections: the first leaves what sync.Pools hold in their
	// victim caches.
	var heapBefore runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&heapBefore)
	before := target.Counters().Unauthenticated
	stop, done := make(chan struct{}), make(chan uint64)
	for s := range 2 {
		go func() {
			var sent uint64
			defer func() { done <- sent }()
			u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Error(err)
				return
			}
			defer u.Close()
			cp := &capture{}
			forger := wire.Seal(cp, other, wire.ClientSide)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := wire.NewClientIdentity()
				m := &wire.Message{Type: wire.TypeQuery, TxID: uint64(i + 1), Op: wire.OpSet, Client: id.ID, Proof: id.Proof,
					Seq: 1, Ack: 1, Args: wire.Args{Key: fmt.Sprint("forged-", s, "-", i), Value: "x"}}
				d, err := wire.Encode(m)
				if err != nil {
					t.Error(err)
					return
				}
				if i%2 == 1 {
					if err := forger.Send(d, to); err != nil {
						t.Error(err)
						return
					}
					d = cp.last
				}
				if _, err := u.WriteToUDPAddrPort(d, to); err == nil {
					sent++
				}
				if i%64 == 63 {
					time.Sleep(5 * time.Millisecond) // about 10,000 a second from each sender at most
				}
			}
		}()
	}
	end := time.Now().Add(2500 * time.Millisecond)
	loaded := setGetLatencies(t, rc, "good", &seq, 20, func() bool { return time.Now().Before(end) })
	close(stop)
	sent := <-done + <-done
	servertest.WaitFor(t, 10*time.Second, "the node to take in the flood", func() bool {
		return target.Counters().Unauthenticated-before >= sent*9/10 // the kernel may drop some
	})
	var heapAfter runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&heapAfter)

	t.Logf("quiet: median %v, p99 %v; flooded: median %v, p99 %v; %d forged datagrams sent, %d dropped as unauthenticated; heap %d → %d MiB",
		quantile(quiet, 0.5), quantile(quiet, 0.99), quantile(loaded, 0.5), quantile(loaded, 0.99), sent,
		target.Counters().Unauthenticated-before, heapBefore.HeapInuse>>20, heapAfter.HeapInuse>>20)
	if sent < 5000 {
		t.Errorf("the flood sent only %d datagrams", sent)
	}
	// Floors as in TestLongPollFloodDoesNotStarveOthers: a shared machine
	// stalls a p99 of a few hundred requests by itself.
	if bound := max(3*quantile(quiet, 0.5), 25*time.Millisecond); quantile(loaded, 0.5) > bound {
		t.Errorf("median under the flood: %v, want at most %v", quantile(loaded, 0.5), bound)
	}
	if bound := max(3*quantile(quiet, 0.99), 250*time.Millisecond); quantile(loaded, 0.99) > bound {
		t.Errorf("p99 under the flood: %v, want at most %v", quantile(loaded, 0.99), bound)
	}
	if grew := int64(heapAfter.HeapInuse) - int64(heapBefore.HeapInuse); grew > 8<<20 {
		t.Errorf("the heap grew by %d MiB under a flood of forged datagrams", grew>>20)
	}
	if st := target.ShardStats(0); st.Sessions > 2 {
		t.Errorf("%d sessions after a flood of forged writes", st.Sessions)
	}
}
