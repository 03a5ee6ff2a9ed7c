package server

import (
	"sync"
	"sync/atomic"

	"github.com/shoal-kv/shoal/shard"
)

// jobWatch is a node's one "jobs changed" signal: an acquire waiting for a
// job of a topic, on whichever of the node's replicas, waits on one channel
// of its own, which gets a wake-up when a job of the topic may have become
// available on any replica (see fsm.Observer), or when a replica that it is
// waiting on to catch up has applied past the index it named. Each replica's
// state machine reports to it through a replicaObserver.
//
// Its tables hold only live watchers: a watcher leaves them when its owner
// stops it, and a catch-up wish when it comes true.
type jobWatch struct {
	// watchers and wishes count the entries of topics and catchUp, so that
	// the replicas, which report every apply, skip the lock while nobody
	// waits. blocked counts the acquires asleep until a wake-up (see
	// Node.waitForJobs).
	watchers, wishes, blocked atomic.Int64

	mu     sync.Mutex
	topics map[string]map[*jobWatcher]struct{}
	// catchUp[s][w] is the index past which shard s's replica here wakes
	// watcher w.
	catchUp map[shard.ID]map[*jobWatcher]uint64
}

// jobWatcher is one waiting acquire's view of a jobWatch.
type jobWatcher struct {
	w     *jobWatch
	topic string
	// wake holds a wake-up until the owner takes it: one that comes while
	// the owner looks at the replicas is not lost.
	wake chan struct{}
	// shards lists the shards this watcher has a catch-up wish on; under
	// w.mu.
	shards []shard.ID
}

func newJobWatch() *jobWatch {
	return &jobWatch{topics: make(map[string]map[*jobWatcher]struct{}), catchUp: make(map[shard.ID]map[*jobWatcher]uint64)}
}

// watch returns a watcher of topic's jobs. The caller must stop it.
func (w *jobWatch) watch(topic string) *jobWatcher {
	jw := &jobWatcher{w: w, topic: topic, wake: make(chan struct{}, 1)}
	w.mu.Lock()
	defer w.mu.Unlock()
	ws := w.topics[topic]
	if ws == nil {
		ws = make(map[*jobWatcher]struct{})
		w.topics[topic] = ws
	}
	ws[jw] = struct{}{}
	w.watchers.Add(1)
	return jw
}

// after asks for a wake-up once this node's replica of shard id has applied
// past index; it replaces an earlier wish for the same shard. The caller
// looks at the replica after asking, so that a catch-up in between still
// wakes it.
func (jw *jobWatcher) after(id shard.ID, index uint64) {
	w := jw.w
	w.mu.Lock()
	defer w.mu.Unlock()
	ws := w.catchUp[id]
	if ws == nil {
		ws = make(map[*jobWatcher]uint64)
		w.catchUp[id] = ws
	}
	if _, ok := ws[jw]; !ok {
		jw.shards = append(jw.shards, id)
		w.wishes.Add(1)
	}
	ws[jw] = index
}

// stop removes the watcher and its wishes from the node's tables.
func (jw *jobWatcher) stop() {
	w := jw.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if ws := w.topics[jw.topic]; ws != nil {
		if _, ok := ws[jw]; ok {
			delete(ws, jw)
			w.watchers.Add(-1)
		}
		if len(ws) == 0 {
			delete(w.topics, jw.topic)
		}
	}
	for _, id := range jw.shards {
		w.forgetCatchUp(id, jw)
	}
	jw.shards = nil
}

// forgetCatchUp drops jw's wish on shard id; w.mu is held.
func (w *jobWatch) forgetCatchUp(id shard.ID, jw *jobWatcher) {
	if ws := w.catchUp[id]; ws != nil {
		if _, ok := ws[jw]; ok {
			delete(ws, jw)
			w.wishes.Add(-1)
		}
		if len(ws) == 0 {
			delete(w.catchUp, id)
		}
	}
}

func (jw *jobWatcher) signal() {
	select {
	case jw.wake <- struct{}{}:
	default: // a wake-up is waiting already
	}
}

// jobsChanged wakes the watchers of topic, or every watcher for "".
func (w *jobWatch) jobsChanged(topic string) {
	if w.watchers.Load() == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if topic == "" {
		for _, ws := range w.topics {
			for jw := range ws {
				jw.signal()
			}
		}
		return
	}
	for jw := range w.topics[topic] {
		jw.signal()
	}
}

// applied wakes the watchers waiting for shard id's replica to apply past
// an index below index.
func (w *jobWatch) applied(id shard.ID, index uint64) {
	if w.wishes.Load() == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for jw, past := range w.catchUp[id] {
		if index > past {
			jw.signal()
			w.forgetCatchUp(id, jw)
			jw.shards = removeID(jw.shards, id)
		}
	}
}

func removeID(ids []shard.ID, id shard.ID) []shard.ID {
	for i, x := range ids {
		if x == id {
			return append(ids[:i], ids[i+1:]...)
		}
	}
	return ids
}

// replicaObserver passes what one replica's state machine applies on to
// its node's jobWatch, and to the replica's reads waiting for an index.
type replicaObserver struct {
	watch   *jobWatch
	id      shard.ID
	applied *applyWait
}

func (o replicaObserver) Applied(index uint64) {
	o.watch.applied(o.id, index)
	o.applied.wake()
}
func (o replicaObserver) JobsChanged(topic string) { o.watch.jobsChanged(topic) }
