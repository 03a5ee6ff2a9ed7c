package server

import (
	"container/list"
	"net/netip"
	"sync"
	"time"
)

// clients remembers the addresses that sent valid queries within the last
// ttl: the ones a node heartbeats to. It holds at most max of them; a new
// address past that takes the place of the one heard from least recently,
// so that a flood of new addresses costs the node at most max heartbeats
// an interval, and a client pushed out is back with its next query.
type clients struct {
	mu  sync.Mutex
	max int
	ttl time.Duration
	// byHeard lists the addresses, each a *recentClient, the one heard
	// from most recently first. Queries are touched in the order they are
	// handled, nearly that of their times, so the list is nearly sorted by
	// heard: at worst an address outlives its ttl by the time one query
	// took to be handled.
	byHeard list.List
	byAddr  map[netip.AddrPort]*list.Element
	evicted uint64
}

type recentClient struct {
	addr  netip.AddrPort
	heard time.Time
}

func newClients(max int, ttl time.Duration) *clients {
	return &clients{max: max, ttl: ttl, byAddr: make(map[netip.AddrPort]*list.Element)}
}

// touch records a valid query from addr at now.
func (c *clients) touch(addr netip.AddrPort, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byAddr[addr]; ok {
		e.Value.(*recentClient).heard = now
		c.byHeard.MoveToFront(e)
		return
	}
	if c.byHeard.Len() < c.max {
		c.byAddr[addr] = c.byHeard.PushFront(&recentClient{addr: addr, heard: now})
		return
	}
	// Full: the address heard from least recently makes room, and its
	// entry serves the new one.
	oldest := c.byHeard.Back()
	rc := oldest.Value.(*recentClient)
	if now.Sub(rc.heard) <= c.ttl {
		c.evicted++
	}
	delete(c.byAddr, rc.addr)
	rc.addr, rc.heard = addr, now
	c.byHeard.MoveToFront(oldest)
	c.byAddr[addr] = oldest
}

func (c *clients) remove(e *list.Element) {
	delete(c.byAddr, e.Value.(*recentClient).addr)
	c.byHeard.Remove(e)
}

// recent returns the addresses heard from since now-ttl and forgets the
// rest.
func (c *clients) recent(now time.Time) []netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	for e := c.byHeard.Back(); e != nil && now.Sub(e.Value.(*recentClient).heard) > c.ttl; e = c.byHeard.Back() {
		c.remove(e)
	}
	out := make([]netip.AddrPort, 0, c.byHeard.Len())
	for e := c.byHeard.Front(); e != nil; e = e.Next() {
		out = append(out, e.Value.(*recentClient).addr)
	}
	return out
}

// evictions counts the addresses dropped to make room before their ttl
// ran out.
func (c *clients) evictions() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.evicted
}
