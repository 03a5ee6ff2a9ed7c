package server

import (
	"reflect"
	"sync"

	"github.com/hashicorp/raft"
)

// awaitFuture waits for f like f.Error(), but gives up with
// raft.ErrRaftShutdown once stop closes.
//
// hashicorp/raft can leave a future unanswered forever when it shuts down
// while the future's entry waits in one of its queues (hashicorp/raft#498,
// open): a plain f.Error() then never returns. Its futures embed a
// deferError whose Error() also returns when the exported field ShutdownCh
// closes, a field raft itself sets only on a few internal futures. We set
// it to stop; TestFutureShutdownHook checks that the hook still takes.
func awaitFuture(f raft.Future, stop chan struct{}) error {
	hookShutdown(f, stop)
	return f.Error()
}

// shutdownFields caches, per future type, the index of its settable
// ShutdownCh field, or nil when it has none: looking a field up by name
// costs more than the rest of a proposal.
var shutdownFields sync.Map // reflect.Type → []int

// hookShutdown sets f's ShutdownCh to stop if f has one that is unset, and
// reports whether it did.
func hookShutdown(f raft.Future, stop chan struct{}) bool {
	v := reflect.ValueOf(f)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return false
	}
	t := v.Elem().Type()
	index, ok := shutdownFields.Load(t)
	if !ok {
		var idx []int
		if sf, found := t.FieldByName("ShutdownCh"); found && sf.IsExported() && sf.Type == reflect.TypeOf(stop) {
			idx = sf.Index
		}
		index, _ = shutdownFields.LoadOrStore(t, idx)
	}
	if index.([]int) == nil {
		return false
	}
	fld, err := v.Elem().FieldByIndexErr(index.([]int))
	if err != nil || !fld.CanSet() || !fld.IsNil() {
		return false
	}
	fld.Set(reflect.ValueOf(stop))
	return true
}
