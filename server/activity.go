package server

import (
	"net/netip"
	"sync"
	"time"
)

// activity counts client requests over a sliding window of one-second
// buckets. It is the load a node reports in every reply and heartbeat, and
// what clients' pickers weigh.
type activity struct {
	mu      sync.Mutex
	counts  []int64 // per bucket
	seconds []int64 // the Unix second each bucket counts
}

func newActivity(window time.Duration) *activity {
	n := int(window / time.Second)
	if n < 1 {
		n = 1
	}
	return &activity{counts: make([]int64, n), seconds: make([]int64, n)}
}

func (a *activity) add(now time.Time) {
	s := now.Unix()
	i := int(s % int64(len(a.counts)))
	a.mu.Lock()
	if a.seconds[i] != s {
		a.seconds[i], a.counts[i] = s, 0
	}
	a.counts[i]++
	a.mu.Unlock()
}

// count returns the requests in the window ending now.
func (a *activity) count(now time.Time) int64 {
	s := now.Unix()
	oldest := s - int64(len(a.counts)) + 1
	var total int64
	a.mu.Lock()
	for i, sec := range a.seconds {
		if sec >= oldest && sec <= s {
			total += a.counts[i]
		}
	}
	a.mu.Unlock()
	return total
}

// maxClients bounds the addresses a node heartbeats to. Past it, new
// clients are served but not heartbeated until older ones lapse.
const maxClients = 1 << 16

// clients remembers the addresses that sent requests recently: the ones a
// node heartbeats to.
type clients struct {
	mu   sync.Mutex
	seen map[netip.AddrPort]time.Time
}

func (c *clients) touch(addr netip.AddrPort, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = make(map[netip.AddrPort]time.Time)
	}
	if _, ok := c.seen[addr]; ok || len(c.seen) < maxClients {
		c.seen[addr] = now
	}
}

// recent returns the addresses seen since now-ttl and forgets the rest.
func (c *clients) recent(now time.Time, ttl time.Duration) []netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]netip.AddrPort, 0, len(c.seen))
	for addr, t := range c.seen {
		if now.Sub(t) > ttl {
			delete(c.seen, addr)
			continue
		}
		out = append(out, addr)
	}
	return out
}
