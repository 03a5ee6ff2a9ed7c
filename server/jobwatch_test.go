package server

import (
	"testing"

	"github.com/shoal-kv/shoal/shard"
)

// woken reports whether jw holds a wake-up, and takes it.
func woken(jw *jobWatcher) bool {
	select {
	case <-jw.wake:
		return true
	default:
		return false
	}
}

// A watcher wakes for its topic's changes and for every topic's, not for
// another topic's; a catch-up wish wakes it once, when its shard's replica
// applies past the index, and then is gone; stopping empties the tables.
func TestJobWatch(t *testing.T) {
	w := newJobWatch()
	mail, sms := w.watch("mail"), w.watch("sms")
	w.jobsChanged("sms")
	if woken(mail) || !woken(sms) {
		t.Error("a change of sms did not wake sms alone")
	}
	w.jobsChanged("")
	if !woken(mail) || !woken(sms) {
		t.Error("a change of every topic did not wake both")
	}
	w.jobsChanged("mail")
	w.jobsChanged("mail")
	if !woken(mail) || woken(mail) {
		t.Error("two changes before a look make one wake-up, not none or two")
	}

	mail.after(3, 10)
	mail.after(3, 12) // replaces the first wish
	for _, tc := range []struct {
		shard   uint32
		applied uint64
		want    bool
	}{{4, 100, false}, {3, 11, false}, {3, 12, false}, {3, 13, true}, {3, 14, false}} {
		w.applied(shard.ID(tc.shard), tc.applied)
		if got := woken(mail); got != tc.want {
			t.Errorf("shard %d applied %d: woken %v, want %v", tc.shard, tc.applied, got, tc.want)
		}
	}
	if n := w.wishes.Load(); n != 0 {
		t.Errorf("%d wishes left after the one came true", n)
	}

	sms.after(5, 1)
	mail.stop()
	sms.stop()
	if w.watchers.Load() != 0 || w.wishes.Load() != 0 || len(w.topics) != 0 || len(w.catchUp) != 0 {
		t.Errorf("after every stop: %d watchers, %d wishes, tables %v %v", w.watchers.Load(), w.wishes.Load(), w.topics, w.catchUp)
	}
}
