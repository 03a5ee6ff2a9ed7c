package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// pipe is a Transport that records what is sent and receives what the test
// queues, for tests of what wraps a transport.
type pipe struct {
	sent  chan []byte
	inbox chan []byte
}

func newPipe() *pipe { return &pipe{sent: make(chan []byte, 16), inbox: make(chan []byte, 16)} }

// pipeAddr is every pipe's address.
var pipeAddr = netip.MustParseAddrPort("127.0.0.1:1")

func (p *pipe) LocalAddr() netip.AddrPort { return pipeAddr }
func (p *pipe) Send(b []byte, _ netip.AddrPort) error {
	p.sent <- bytes.Clone(b)
	return nil
}
func (p *pipe) Receive(buf []byte) (int, netip.AddrPort, time.Time, error) {
	b, ok := <-p.inbox
	if !ok {
		return 0, netip.AddrPort{}, time.Time{}, net.ErrClosed
	}
	return copy(buf, b), netip.MustParseAddrPort("127.0.0.1:2"), time.Now(), nil
}
func (p *pipe) Close() error { close(p.inbox); return nil }

func testKeyring(t *testing.T, secrets ...string) *Keyring {
	t.Helper()
	var raw [][]byte
	for _, s := range secrets {
		raw = append(raw, bytes.Repeat([]byte(s), MinSecretSize))
	}
	k, err := NewKeyring(raw...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sealed returns what s sends for msg.
func sealed(t *testing.T, s *SealedTransport, p *pipe, msg string) []byte {
	t.Helper()
	if err := s.Send([]byte(msg), pipeAddr); err != nil {
		t.Fatal(err)
	}
	return <-p.sent
}

// sealedTo returns what s sends for msg to addr.
func sealedTo(t *testing.T, s *SealedTransport, p *pipe, msg string, addr netip.AddrPort) []byte {
	t.Helper()
	if err := s.Send([]byte(msg), addr); err != nil {
		t.Fatal(err)
	}
	return <-p.sent
}

// opened feeds d to r and reports what r delivers, if anything, before a
// new marker datagram, which marker seals, behind it.
func opened(t *testing.T, r *SealedTransport, rp *pipe, d []byte, marker func() []byte) (string, bool) {
	t.Helper()
	rp.inbox <- d
	rp.inbox <- marker()
	buf := make([]byte, MaxDatagramSize+1)
	n, _, _, err := r.Receive(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) == "marker" {
		return "", false
	}
	got := string(buf[:n])
	if n, _, _, err := r.Receive(buf); err != nil || string(buf[:n]) != "marker" {
		t.Fatalf("after the datagram: %q, %v", buf[:n], err)
	}
	return got, true
}

func TestSealedTransportOpensOnlyWhatItsPeerSealed(t *testing.T) {
	cp, np := newPipe(), newPipe()
	client := Seal(cp, testKeyring(t, "a"), ClientSide)
	node := Seal(np, testKeyring(t, "a"), NodeSide)
	marker := func() []byte { return sealed(t, client, cp, "marker") }

	q := sealed(t, client, cp, "query")
	if len(q) != len("query")+SealOverhead {
		t.Errorf("sealed query of %d bytes, want %d", len(q), len("query")+SealOverhead)
	}
	rejectedBefore := node.Rejected()
	if _, ok := opened(t, node, np, q, marker); !ok {
		t.Fatal("the node did not open the client's query")
	}

	stranger := Seal(newPipe(), testKeyring(t, "b"), ClientSide)
	forged := bytes.Clone(q)
	forged[len(forged)-1] ^= 1
	tooLate := Seal(newPipe(), testKeyring(t, "a"), ClientSide)
	tooLate.now = func() time.Time { return time.Now().Add(-ReplayWindow - time.Second) }
	tooEarly := Seal(newPipe(), testKeyring(t, "a"), ClientSide)
	tooEarly.now = func() time.Time { return time.Now().Add(ReplayWindow + time.Second) }
	nodeReply := Seal(newPipe(), testKeyring(t, "a"), NodeSide)

	for _, c := range []struct {
		name string
		d    []byte
	}{
		{"plain", []byte("d1:y1:qe")},
		{"empty", nil},
		{"another secret", sealed(t, stranger, stranger.inner.(*pipe), "query")},
		{"forged tag", forged},
		{"sent before the replay window", sealed(t, tooLate, tooLate.inner.(*pipe), "query")},
		{"sent after the replay window", sealed(t, tooEarly, tooEarly.inner.(*pipe), "query")},
		{"a node's reply passed off as a query", sealed(t, nodeReply, nodeReply.inner.(*pipe), "query")},
		{"a query for another node", sealedTo(t, client, cp, "query", netip.MustParseAddrPort("127.0.0.1:2"))},
	} {
		if got, ok := opened(t, node, np, c.d, marker); ok {
			t.Errorf("%s: the node opened %q", c.name, got)
		}
	}
	if got := node.Rejected() - rejectedBefore; got != 8 {
		t.Errorf("Rejected counted %d, want 8", got)
	}

	// And the other way: the client opens the node's replies only.
	replyMarker := func() []byte { return sealed(t, node, np, "marker") }
	if got, ok := opened(t, client, cp, sealed(t, node, np, "reply"), replyMarker); !ok || got != "reply" {
		t.Errorf("the client opened %q, %v", got, ok)
	}
	if _, ok := opened(t, client, cp, q, replyMarker); ok {
		t.Error("the client opened a query as a reply")
	}
	client.Close()
	node.Close()
}

// A keyring opens with every secret it holds and seals with the first, so
// that a secret can be rotated one node at a time.
func TestKeyringRotation(t *testing.T) {
	oldOnly, both, newFirst := testKeyring(t, "o"), testKeyring(t, "o", "n"), testKeyring(t, "n", "o")
	for _, c := range []struct {
		name           string
		sender, opener *Keyring
		ok             bool
	}{
		{"old to both", oldOnly, both, true},
		{"both to old", both, oldOnly, true},
		{"new first to old", newFirst, oldOnly, false},
		{"new first to both", newFirst, both, true},
	} {
		sp, rp := newPipe(), newPipe()
		s, r := Seal(sp, c.sender, ClientSide), Seal(rp, c.opener, NodeSide)
		ms := Seal(newPipe(), c.opener, ClientSide)
		m := func() []byte { return sealed(t, ms, ms.inner.(*pipe), "marker") }
		if _, ok := opened(t, r, rp, sealed(t, s, sp, "q"), m); ok != c.ok {
			t.Errorf("%s: opened = %v, want %v", c.name, ok, c.ok)
		}
	}
	if ids := newFirst.IDs(); len(ids) != 2 || ids[0] != both.IDs()[1] || ids[1] != both.IDs()[0] {
		t.Errorf("IDs: %v and %v", newFirst.IDs(), both.IDs())
	}
}

func TestKeyringFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secret")
	first, second := NewSecret(), NewSecret()
	if bytes.Equal(first, second) {
		t.Fatal("two new secrets are equal")
	}
	if err := os.WriteFile(path, append(append([]byte("# rotated\n"), second...), first...), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	one, err := ParseKeyring(second)
	if err != nil {
		t.Fatal(err)
	}
	if k.IDs()[0] != one.IDs()[0] || len(k.IDs()) != 2 {
		t.Errorf("file ids %v, first secret's %v", k.IDs(), one.IDs())
	}
	for name, text := range map[string]string{
		"empty": "", "not hex": "zz\n", "short": "00112233\n",
	} {
		if _, err := ParseKeyring([]byte(text)); !errors.Is(err, ErrAuth) {
			t.Errorf("%s: err = %v, want ErrAuth", name, err)
		}
	}
	if _, err := LoadKeyring(filepath.Join(dir, "missing")); !errors.Is(err, ErrAuth) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestSealedSendRefusesWhatCannotFit(t *testing.T) {
	p := newPipe()
	s := Seal(p, testKeyring(t, "a"), ClientSide)
	if err := s.Send(make([]byte, MaxMessageSize+1), netip.AddrPort{}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Send = %v, want ErrTooLarge", err)
	}
	if err := s.Send(make([]byte, MaxMessageSize), netip.AddrPort{}); err != nil {
		t.Errorf("Send of MaxMessageSize: %v", err)
	}
	if d := <-p.sent; len(d) != MaxDatagramSize {
		t.Errorf("sealed %d bytes, want %d", len(d), MaxDatagramSize)
	}
}

func BenchmarkSealOpen(b *testing.B) {
	cp, np := newPipe(), newPipe()
	k, _ := NewKeyring(bytes.Repeat([]byte("k"), MinSecretSize))
	client, node := Seal(cp, k, ClientSide), Seal(np, k, NodeSide)
	msg := bytes.Repeat([]byte("m"), 100)
	buf := make([]byte, MaxDatagramSize+1)
	b.ReportAllocs()
	for b.Loop() {
		client.Send(msg, pipeAddr)
		d := <-cp.sent
		if _, ok := node.open(buf, d); !ok {
			b.Fatal("did not open")
		}
	}
}

// Within the replay window a receiver takes each datagram once.
func TestSealedTransportTakesADatagramOnce(t *testing.T) {
	cp, np := newPipe(), newPipe()
	client := Seal(cp, testKeyring(t, "a"), ClientSide)
	node := Seal(np, testKeyring(t, "a"), NodeSide)
	marker := func() []byte { return sealed(t, client, cp, "marker") }
	q := sealed(t, client, cp, "query")
	if _, ok := opened(t, node, np, q, marker); !ok {
		t.Fatal("the first copy was not taken")
	}
	if _, ok := opened(t, node, np, q, marker); ok {
		t.Error("the second copy was taken")
	}
}

// The filter remembers a nonce for as long as a datagram sent with it
// could be taken, forgets it after, and never holds more than ReplayMemory
// nonces a second of sending.
func TestReplayFilter(t *testing.T) {
	var f replayFilter
	now := time.Unix(1e6, 0)
	nonce := func(i int) []byte {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(i))
		return b[:]
	}
	if !f.add(nonce(1), now, now) || f.add(nonce(1), now, now) {
		t.Fatal("a nonce taken twice, or not at all")
	}
	// Sent at now, it is taken until now+ReplayWindow: still known then.
	if f.add(nonce(1), now, now.Add(ReplayWindow)) {
		t.Error("forgotten within the window")
	}
	for i := 2; i < 2+ReplayMemory; i++ {
		f.add(nonce(i), now, now)
	}
	if f.add(nonce(1<<30), now, now) {
		t.Error("took a datagram past ReplayMemory in one second")
	}
	if !f.add(nonce(1<<30), now.Add(time.Second), now) {
		t.Error("refused a datagram of the next second")
	}
	f.add(nonce(3), now.Add(3*ReplayWindow), now.Add(3*ReplayWindow))
	if len(f.bySecond) != 1 {
		t.Errorf("%d seconds remembered after the window passed, want 1", len(f.bySecond))
	}
}

// A node takes queries sent to any of its addresses, and none sent before
// it started: a node that restarted has forgotten the nonces it took.
func TestNodeTakesQueriesForItsAddressesSinceItStarted(t *testing.T) {
	cp, np := newPipe(), newPipe()
	client := Seal(cp, testKeyring(t, "a"), ClientSide)
	node := Seal(np, testKeyring(t, "a"), NodeSide)
	public := netip.MustParseAddrPort("192.0.2.7:7001")
	node.SetAddrs(pipeAddr, public)
	marker := func() []byte { return sealed(t, client, cp, "marker") }
	if _, ok := opened(t, node, np, sealedTo(t, client, cp, "q", public), marker); !ok {
		t.Error("a query sent to the node's second address was dropped")
	}
	early := Seal(newPipe(), testKeyring(t, "a"), ClientSide)
	early.SetClock(func() time.Time { return time.Now().Add(-time.Second) })
	if _, ok := opened(t, node, np, sealed(t, early, early.inner.(*pipe), "q"), marker); ok {
		t.Error("took a query sent before the node started")
	}
}
