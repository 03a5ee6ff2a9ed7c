package wire

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// SimNet is an in-process datagram network for tests and experiments. Every
// directed link between two endpoints drops, duplicates, delays and reorders
// datagrams according to its Faults, decided by a generator seeded from the
// network's seed and the link's two addresses, so a run with the same seed
// and the same traffic makes the same decisions. Partitions cut links
// outright.
//
// Delays are real time: a SimNet runs at the speed of the code using it.
type SimNet struct {
	seed     int64
	counters faultCounters

	mu        sync.Mutex
	defaults  Faults
	faults    map[linkKey]Faults
	links     map[linkKey]*link
	cut       map[linkKey]bool
	endpoints map[netip.AddrPort]*SimEndpoint
	nextHost  uint32
}

type linkKey struct{ from, to netip.AddrPort }

// simInbox bounds the datagrams queued at an endpoint; past it they are
// dropped, as a full socket buffer would.
const simInbox = 4096

// NewSimNet returns an empty perfect network.
func NewSimNet(seed int64) *SimNet {
	return &SimNet{
		seed:      seed,
		faults:    make(map[linkKey]Faults),
		links:     make(map[linkKey]*link),
		cut:       make(map[linkKey]bool),
		endpoints: make(map[netip.AddrPort]*SimEndpoint),
	}
}

// Listen attaches a new endpoint. An invalid addr (the zero AddrPort) gets
// a fresh address of its own, 10.x.y.z:7000.
func (n *SimNet) Listen(addr netip.AddrPort) (*SimEndpoint, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !addr.IsValid() {
		n.nextHost++
		h := 10<<24 | n.nextHost
		addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(h >> 24), byte(h >> 16), byte(h >> 8), byte(h)}), 7000)
	}
	if _, ok := n.endpoints[addr]; ok {
		return nil, fmt.Errorf("wire: simnet: %s is in use", addr)
	}
	e := &SimEndpoint{net: n, addr: addr, inbox: make(chan datagram, simInbox), done: make(chan struct{})}
	n.endpoints[addr] = e
	return e, nil
}

// SetDefaultFaults sets the faults of every link without faults of its own.
func (n *SimNet) SetDefaultFaults(f Faults) error {
	if err := f.Validate(); err != nil {
		return err
	}
	n.mu.Lock()
	n.defaults = f
	n.mu.Unlock()
	return nil
}

// SetFaults sets the faults of the directed link from → to.
func (n *SimNet) SetFaults(from, to netip.AddrPort, f Faults) error {
	if err := f.Validate(); err != nil {
		return err
	}
	n.mu.Lock()
	n.faults[linkKey{from, to}] = f
	n.mu.Unlock()
	return nil
}

// Partition cuts every link between a member of a and a member of b, in
// both directions, until Heal.
func (n *SimNet) Partition(a, b []netip.AddrPort) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, x := range a {
		for _, y := range b {
			n.cut[linkKey{x, y}] = true
			n.cut[linkKey{y, x}] = true
		}
	}
}

// Isolate cuts addr off from every other endpoint, present and future,
// until Heal.
func (n *SimNet) Isolate(addr netip.AddrPort) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut[linkKey{addr, netip.AddrPort{}}] = true
	n.cut[linkKey{netip.AddrPort{}, addr}] = true
}

// Heal removes every partition.
func (n *SimNet) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.cut)
}

// Stats counts datagrams over all links; Dropped includes those that met a
// partition or no endpoint.
func (n *SimNet) Stats() FaultStats { return n.counters.snapshot() }

func (n *SimNet) send(b []byte, from, to netip.AddrPort) {
	k := linkKey{from, to}
	n.mu.Lock()
	dst := n.endpoints[to]
	blocked := dst == nil || n.cut[k] || n.cut[linkKey{from, netip.AddrPort{}}] || n.cut[linkKey{netip.AddrPort{}, to}]
	f, ok := n.faults[k]
	if !ok {
		f = n.defaults
	}
	l := n.links[k]
	if l == nil {
		l = newLink(n.seed, from, to)
		n.links[k] = l
	}
	n.mu.Unlock()
	if blocked {
		n.counters.sent.Add(1)
		n.counters.dropped.Add(1)
		return
	}
	ft := l.decide(f)
	n.counters.record(ft)
	if ft.copies == 0 {
		return
	}
	ft.deliver(append([]byte(nil), b...), func(b []byte) {
		if dst.enqueue(datagram{b, from, time.Now()}) {
			n.counters.delivered.Add(1)
		}
	})
}

// SimEndpoint is a Transport attached to a SimNet.
type SimEndpoint struct {
	net       *SimNet
	addr      netip.AddrPort
	inbox     chan datagram
	done      chan struct{}
	closeOnce sync.Once
}

var _ Transport = (*SimEndpoint)(nil)

// LocalAddr returns the endpoint's address.
func (e *SimEndpoint) LocalAddr() netip.AddrPort { return e.addr }

// Send puts b on the link to addr.
func (e *SimEndpoint) Send(b []byte, addr netip.AddrPort) error {
	select {
	case <-e.done:
		return fmt.Errorf("wire: send to %s: %w", addr, net.ErrClosed)
	default:
	}
	e.net.send(b, e.addr, addr)
	return nil
}

func (e *SimEndpoint) enqueue(d datagram) bool {
	select {
	case <-e.done:
		return false
	default:
	}
	select {
	case e.inbox <- d:
		return true
	default:
		return false
	}
}

// Receive returns the next datagram delivered to the endpoint. It arrived
// when the network queued it at the endpoint.
func (e *SimEndpoint) Receive(buf []byte) (int, netip.AddrPort, time.Time, error) {
	select {
	case d := <-e.inbox:
		return copy(buf, d.b), d.from, d.arrived, nil
	case <-e.done:
		return 0, netip.AddrPort{}, time.Time{}, fmt.Errorf("wire: receive: %w", net.ErrClosed)
	}
}

// Close detaches the endpoint; its address may be listened on again, as a
// restarted process would.
func (e *SimEndpoint) Close() error {
	e.closeOnce.Do(func() {
		close(e.done)
		e.net.mu.Lock()
		if e.net.endpoints[e.addr] == e {
			delete(e.net.endpoints, e.addr)
		}
		e.net.mu.Unlock()
	})
	return nil
}
