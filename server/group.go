package server

import "sync"

// group owns goroutines: it starts them, refuses new ones once closing, and
// waits for all of them. (A bare WaitGroup may not Add while Wait runs.)
type group struct {
	mu      sync.Mutex
	closing bool
	wg      sync.WaitGroup
}

// Go runs f in a new goroutine and reports true, or reports false without
// running it if the group is closing.
func (g *group) Go(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closing {
		return false
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}

// Wait refuses new goroutines and waits for the running ones to return.
func (g *group) Wait() {
	g.mu.Lock()
	g.closing = true
	g.mu.Unlock()
	g.wg.Wait()
}
