package sim

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/shoal-kv/shoal/client"
)

// history records operations as clients run them.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	// failures lists every operation that failed, with the time it took
	// to fail: the failed writes are in ops too, with an unknown outcome;
	// the failed reads only here.
	failures []failure
}

// failure is an operation that returned an error, in history time.
type failure struct {
	op, key   string
	call, ret int64
}

func newHistory() *history { return &history{start: time.Now()} }

func (h *history) now() int64 { return int64(time.Since(h.start)) }

// add records an operation; an unknown outcome returns at the end of the
// history, since the write may take effect any time until then.
func (h *history) add(clientID int, in kvInput, out kvOutput, call int64) {
	ret := h.now()
	if out.Unknown {
		ret = 1 << 62
	}
	h.mu.Lock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: clientID, Input: in, Call: call, Output: out, Return: ret})
	h.mu.Unlock()
}

// fail records that op on key, called at call, failed now.
func (h *history) fail(op, key string, call int64) {
	ret := h.now()
	h.mu.Lock()
	h.failures = append(h.failures, failure{op: op, key: key, call: call, ret: ret})
	h.mu.Unlock()
}

// opTimeout bounds one operation of kvWorkload: long enough for a client
// configured by historyClient to ride out a leader election, so that few
// writes end with an unknown outcome (each one multiplies the work of the
// check).
const opTimeout = 5 * time.Second

// historyClient is the client configuration of kvWorkload: a request is
// retried, with the same sequence number, until a new leader answers it.
var historyClient = client.Config{Attempts: 12, MaxAttemptTimeout: 400 * time.Millisecond}

// kvWorkload runs clients doing random reads, writes, compare-and-sets and
// deletes on a few keys until ctx ends, recording every one whose outcome
// is known or may have taken effect (failed reads are left out: they had no
// effect).
func kvWorkload(ctx context.Context, h *history, clients []*client.Client, keys []string, seed int64) {
	var wg sync.WaitGroup
	for ci, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(seed), uint64(ci)))
			seen := map[string]uint64{} // the version this client last saw of each key
			for n := 0; ctx.Err() == nil; n++ {
				key := keys[rng.IntN(len(keys))]
				in := kvInput{Key: key, Value: fmt.Sprintf("c%d-%d", ci, n)}
				opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
				call := h.now()
				var out kvOutput
				var err error
				switch r := rng.IntN(10); {
				case r < 4:
					in.Op, in.Value = "get", ""
					var it client.Item
					it, err = cl.Get(opCtx, key)
					out = kvOutput{OK: err == nil, Value: string(it.Value), Version: it.Version}
					if err == nil {
						seen[key] = it.Version
					}
				case r < 7:
					in.Op = "set"
					out.Version, err = cl.Set(opCtx, key, []byte(in.Value))
					out.OK = err == nil
				case r < 9:
					in.Op, in.Version = "cas", seen[key]
					out.Version, err = cl.CompareAndSet(opCtx, key, in.Version, []byte(in.Value))
					out.OK = err == nil
					var e *client.Error
					if errors.As(err, &e) && errors.Is(err, client.ErrVersionConflict) {
						out.Conflict, out.Version = true, e.Version
						seen[key] = e.Version
					}
				default:
					in.Op, in.Value = "del", ""
					err = cl.Delete(opCtx, key)
					out.OK = err == nil
					var e *client.Error
					if errors.As(err, &e) {
						out.Version = e.Version
					}
				}
				cancel()
				switch {
				case err == nil, errors.Is(err, client.ErrNotFound), errors.Is(err, client.ErrVersionConflict):
				case in.Op == "get":
					h.fail(in.Op, key, call)
					continue // a failed read had no effect
				default:
					h.fail(in.Op, key, call)
					out = kvOutput{Unknown: true}
				}
				h.add(ci, in, out, call)
			}
		}()
	}
	wg.Wait()
}

// checkHistory checks h for linearizability within timeout. A history
// that is not linearizable is written as porcupine's visualization to a
// file in dir (see outDir), whose path it returns.
func checkHistory(h *history, dir, name string, timeout time.Duration) (porcupine.CheckResult, string, error) {
	model := kvModel.ToModel()
	res, info := porcupine.CheckOperationsVerbose(model, h.ops, timeout)
	if res != porcupine.Illegal {
		return res, "", nil
	}
	dir, err := outDir(dir)
	if err != nil {
		return res, "", err
	}
	path := filepath.Join(dir, strings.ReplaceAll(name, "/", "-")+".html")
	if err := porcupine.VisualizePath(model, info, path); err != nil {
		return res, "", fmt.Errorf("sim: writing the visualization: %w", err)
	}
	return res, path, nil
}
