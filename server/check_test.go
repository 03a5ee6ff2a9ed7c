package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
	"github.com/shoal-kv/shoal/wire"
)

// recordingTB is a test for servertest.New whose cleanups run when the
// test that holds it says, and whose failures are written down, not
// reported.
type recordingTB struct {
	*testing.T
	cleanups []func()
	errs     []string
}

func (r *recordingTB) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recordingTB) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// cleanUp runs the cleanups, the last registered first, as testing does.
func (r *recordingTB) cleanUp() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

// The cleanup of servertest.New fails a test whose replicas diverged, and
// only such a test: a replica changed outside raft holds a state its peers
// do not, at the same log index.
func TestClusterCheckCatchesDivergence(t *testing.T) {
	t.Parallel()
	for _, diverge := range []bool{false, true} {
		t.Run(fmt.Sprint("diverge=", diverge), func(t *testing.T) {
			rec := &recordingTB{T: t}
			c := servertest.New(rec, servertest.Options{Nodes: 3, Shards: 2, Replicas: 3, Raft: failoverTiming})
			cl := newClient(t, c, client.Config{})
			for i := range 20 {
				if _, err := cl.Set(context.Background(), fmt.Sprint("k", i), []byte("v")); err != nil {
					t.Fatal(err)
				}
			}
			if diverge {
				// A follower, so the leader's own reads do not see it.
				l := leader(t, c, 1)
				for _, id := range c.Running() {
					if id != l.ID() {
						if err := server.Diverge(c.Node(id), 1, "only-here", "x"); err != nil {
							t.Fatal(err)
						}
						break
					}
				}
			}
			rec.cleanUp()
			got := strings.Join(rec.errs, "\n")
			t.Logf("the cleanup reported %q", got)
			switch {
			case diverge && !strings.Contains(got, "replicas diverged: shard 1"):
				t.Errorf("cleanup after a replica of shard 1 diverged reported %q", got)
			case !diverge && got != "":
				t.Errorf("cleanup of a sound cluster reported %q", got)
			}
			if n := len(c.Running()); n != 0 {
				t.Errorf("%d nodes still run after the cleanup", n)
			}
		})
	}
}

// Check waits for followers that learn of commits late: with a CommitTimeout
// of a minute they would hear of the last write only with the next one.
func TestClusterCheckWithQuietFollowers(t *testing.T) {
	t.Parallel()
	c := servertest.New(t, servertest.Options{Raft: server.RaftTiming{CommitTimeout: server.Duration(time.Minute)}})
	addr := clientAddr(c, leader(t, c, 0).ID())
	for i := range 5 {
		if r := request(t, c, addr, &wire.Message{Type: wire.TypeQuery, Op: wire.OpSet, Client: "check-test", Seq: uint64(i + 1),
			Args: wire.Args{Key: "k", Value: fmt.Sprint(i)}}); r.Type != wire.TypeResponse {
			t.Fatalf("set: %+v", r.Err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Check(ctx); err != nil {
		t.Fatal(err)
	}
}
