package server_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/wire"
)

// rawClient sends queries to one node from a socket of its own and
// collects the replies, by transaction id, and the heartbeats.
type rawClient struct {
	t          testing.TB
	u          wire.Transport
	to         netip.AddrPort
	replies    chan wire.Message
	heartbeats chan rawHeartbeat // the latest, dropped when full
	done       chan struct{}
	tx         uint64
	early      map[uint64]wire.Message // replies that came while awaiting others
}

// newRawClient returns a rawClient of node address to of cluster c,
// sealing with the cluster's secret.
func newRawClient(t testing.TB, c *servertest.Cluster, to string) *rawClient {
	t.Helper()
	addr, err := wire.ParseAddr(to)
	if err != nil {
		t.Fatal(err)
	}
	u, err := sealedSocket(c)
	if err != nil {
		t.Fatal(err)
	}
	rc := &rawClient{t: t, u: u, to: addr, replies: make(chan wire.Message, 64), done: make(chan struct{}),
		heartbeats: make(chan rawHeartbeat, 16), early: map[uint64]wire.Message{}}
	go func() {
		defer close(rc.done)
		buf := make([]byte, wire.MaxDatagramSize+1)
		for {
			n, _, _, err := u.Receive(buf)
			if err != nil {
				return // closed
			}
			r, err := wire.Decode(buf[:n])
			switch {
			case err != nil:
			case r.Type == wire.TypeHeartbeat:
				select {
				case rc.heartbeats <- rawHeartbeat{r, n}:
				default:
				}
			default:
				select {
				case rc.replies <- r:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		u.Close()
		<-rc.done
	})
	return rc
}

// rawHeartbeat is a heartbeat and its size.
type rawHeartbeat struct {
	wire.Message
	size int
}

// send sends m under a new transaction id, which it returns. Like
// rawRequest, it replaces a client name in m by a proven id.
func (rc *rawClient) send(m *wire.Message) uint64 {
	rc.t.Helper()
	rc.tx++
	m.TxID = rc.tx
	if m.Client != "" && m.Proof == "" {
		*m = proven(*m)
	}
	rc.resend(m)
	return m.TxID
}

func (rc *rawClient) resend(m *wire.Message) {
	rc.t.Helper()
	b, err := wire.Encode(m)
	if err != nil {
		rc.t.Fatal(err)
	}
	if err := rc.u.Send(b, rc.to); err != nil {
		rc.t.Fatal(err)
	}
}

// await returns the reply to transaction tx, if it comes within d.
func (rc *rawClient) await(tx uint64, d time.Duration) (wire.Message, bool) {
	if r, ok := rc.early[tx]; ok {
		delete(rc.early, tx)
		return r, true
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case r := <-rc.replies:
			if r.TxID == tx {
				return r, true
			}
			rc.early[r.TxID] = r
		case <-timer.C:
			return wire.Message{}, false
		}
	}
}

// do sends m, again every resend until a reply to it comes, and returns
// the reply and the time from the first send to it.
func (rc *rawClient) do(m *wire.Message, resend time.Duration) (wire.Message, time.Duration) {
	rc.t.Helper()
	start := time.Now()
	tx := rc.send(m)
	for range 20 {
		if r, ok := rc.await(tx, resend); ok {
			return r, time.Since(start)
		}
		rc.resend(m)
	}
	rc.t.Fatalf("no reply to %s after 20 sends", m.Op)
	return wire.Message{}, 0
}

// sealedSocket opens a UDP socket on 127.0.0.1 that seals with c's
// secret, if it has one.
func sealedSocket(c *servertest.Cluster) (wire.Transport, error) {
	u, err := wire.ListenUDP("127.0.0.1:0")
	if err != nil || c.Secret() == nil {
		return u, err
	}
	return wire.Seal(u, c.Secret(), wire.ClientSide), nil
}
