package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"go.uber.org/goleak"
)

// TestMain starts a 3-node cluster for the examples and end-to-end tests of
// this package, and publishes its seeds in SHOAL_SEEDS.
func TestMain(m *testing.M) {
	code, err := runWithCluster(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

func runWithCluster(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "shoal-client-test-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	spec, err := server.LocalSpec(3, 4, 3)
	if err != nil {
		return 0, err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var seeds []string
	for _, ns := range spec.Nodes {
		n, err := server.Start(context.Background(), server.Config{
			ID: ns.ID, DataDir: dir + "/" + ns.ID, Spec: spec, Logger: quiet,
		})
		if err != nil {
			return 0, err
		}
		defer n.Close()
		seeds = append(seeds, ns.Client)
	}
	os.Setenv("SHOAL_SEEDS", strings.Join(seeds, ","))
	if err := waitForLeaders(seeds); err != nil {
		return 0, err
	}
	return m.Run(), nil
}

// waitForLeaders waits until a write to every shard succeeds.
func waitForLeaders(seeds []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.New(ctx, client.Config{Seeds: seeds, Attempts: 1000})
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	m := c.Map()
	for _, s := range m.Shards {
		for i := 0; ; i++ {
			k := fmt.Sprint("warmup-", i)
			if m.ShardOf(k) != s.ID {
				continue
			}
			if _, err := c.Set(ctx, k, nil); err != nil {
				return fmt.Errorf("shard %d: %w", s.ID, err)
			}
			break
		}
	}
	return nil
}
