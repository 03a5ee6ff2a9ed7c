package server_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/server/servertest"
)

// A node keeps its raft logs where the spec says (log_store), brings them
// back on restart, and refuses to start when the spec names the other
// store than the one its logs are in, rather than start its replicas from
// their snapshots with their logs unseen. A spec that names no store keeps
// the one the logs are in.
func TestLogStoreIsChosenAndKept(t *testing.T) {
	for _, kept := range []string{server.LogStoreNode, server.LogStoreBolt} {
		t.Run(kept, func(t *testing.T) {
			spec, err := server.LocalSpec(1, 2, 1)
			if err != nil {
				t.Fatal(err)
			}
			spec.LogStore, spec.Raft = kept, failoverTiming
			c := servertest.New(t, servertest.Options{Spec: spec})
			ctx := context.Background()
			cl := newClient(t, c, client.Config{})
			for i := range 20 {
				if _, err := cl.Set(ctx, fmt.Sprint("k", i), []byte(fmt.Sprint(i))); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.Kill("n1"); err != nil {
				t.Fatal(err)
			}
			other := server.LogStoreBolt
			if kept == server.LogStoreBolt {
				other = server.LogStoreNode
			}
			spec.LogStore = other
			_, err = c.Restart(ctx, "n1")
			if !errors.Is(err, server.ErrInvalidSpec) {
				t.Fatalf("restart on logs kept in %q with a spec that says %q: %v, want ErrInvalidSpec", kept, other, err)
			}
			t.Logf("refused: %v", err)
			// The store the logs are in, named or (as in the spec of a
			// cluster made before the node log) left unsaid.
			for _, named := range []string{kept, ""} {
				spec.LogStore = named
				if _, err := c.Restart(ctx, "n1"); err != nil {
					t.Fatalf("restart with log_store %q: %v", named, err)
				}
				if err := c.WaitReady(ctx); err != nil {
					t.Fatal(err)
				}
				for i := range 20 {
					it, err := cl.Get(ctx, fmt.Sprint("k", i))
					if err != nil || string(it.Value) != fmt.Sprint(i) {
						t.Fatalf("k%d after a restart with log_store %q: %q, %v", i, named, it.Value, err)
					}
				}
				if err := c.Kill("n1"); err != nil {
					t.Fatal(err)
				}
			}
			spec.LogStore = kept
			if _, err := c.Restart(ctx, "n1"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A replica does not start on a node log other than the one it kept its log
// in (the node's raftlog directory was lost or made anew), nor with entries
// in the node log when its raft state, which names the node log, was lost:
// raft would forget acknowledged entries, or could vote twice in a term.
func TestLostNodeLogIsRefused(t *testing.T) {
	c := servertest.New(t, servertest.Options{Nodes: 1, Shards: 1, Replicas: 1, Raft: failoverTiming})
	ctx := context.Background()
	cl := newClient(t, c, client.Config{})
	if _, err := cl.Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill("n1"); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(c.Dir(), "n1")
	for _, lost := range []string{"raftlog", filepath.Join("shard-0", "raft.db")} {
		path := filepath.Join(data, lost)
		if err := os.Rename(path, path+".kept"); err != nil {
			t.Fatal(err)
		}
		_, err := c.Restart(ctx, "n1")
		if !errors.Is(err, server.ErrDataDir) {
			t.Fatalf("restart without %s: %v, want ErrDataDir", lost, err)
		}
		t.Logf("without %s: %v", lost, err)
		if err := os.RemoveAll(path); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".kept", path); err != nil {
			t.Fatal(err)
		}
	}
	// A replica whose raft state has a term but does not name the node
	// log (one made before replicas noted it) notes it and starts.
	bolt, err := raftboltdb.NewBoltStore(filepath.Join(data, "shard-0", "raft.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(bolt.Set([]byte("shoal_node_log"), nil), bolt.Close()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Restart(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if it, err := cl.Get(ctx, "k"); err != nil || string(it.Value) != "v" {
		t.Fatalf("k after restart: %q, %v", it.Value, err)
	}
}
