package client_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server/servertest"
	"go.uber.org/goleak"
)

// TestMain starts a cluster of 3 nodes holding 4 shards of 3 replicas for
// the examples and end-to-end tests of this package, publishes its seeds in
// SHOAL_SEEDS and the path of its secret in SHOAL_SECRET_FILE, and after the tests checks that its replicas converged.
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

func runWithCluster(m *testing.M) (code int, err error) {
	c, err := servertest.Start(context.Background(), servertest.Options{Nodes: 3, Shards: 4, Replicas: 3})
	if err != nil {
		return 0, err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), servertest.CheckTimeout)
		defer cancel()
		if cerr := c.Check(ctx); cerr != nil && err == nil {
			err = cerr
		}
		if cerr := c.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	os.Setenv("SHOAL_SEEDS", strings.Join(c.Seeds(), ","))
	os.Setenv(client.SecretFileEnv, filepath.Join(c.Dir(), servertest.SecretFile))
	return m.Run(), nil
}
