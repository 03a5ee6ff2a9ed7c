package client

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/shoal-kv/shoal/server/servertest"
)

// adminEcho is the fake nodes' answer to the cluster command "echo": who
// answered, and the arguments it was sent.
type adminEcho struct {
	Node string `json:"node"`
	Args string `json:"args"`
}

// Admin sends its arguments as JSON, decodes the answer, goes to a live
// node when one is silent, and maps a refused command onto
// ErrInvalidArgument with the node's message.
func TestAdmin(t *testing.T) {
	fc := newFakeCluster(t, 3)
	c := fc.client(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var got adminEcho
	if err := c.Admin(ctx, "echo", map[string]string{"id": "n4"}, &got); err != nil {
		t.Fatal(err)
	}
	if got.Args != `{"id":"n4"}` || got.Node == "" {
		t.Errorf("answer %+v: want the arguments as JSON, from some node", got)
	}
	if err := c.Admin(ctx, "echo", nil, &got); err != nil || got.Args != "" {
		t.Errorf("no arguments: answer %+v, %v; want empty arguments", got, err)
	}

	fc.nodes[0].set(func(f *fakeNode) { f.silent = true })
	servertest.WaitFor(t, 5*time.Second, "a taken for dead", func() bool { return !nodeInfo(c, "a").Alive })
	for range 10 {
		if err := c.Admin(ctx, "echo", nil, &got); err != nil {
			t.Fatal(err)
		}
		if got.Node == "a" {
			t.Fatal("a silent node answered")
		}
	}

	err := c.Admin(ctx, "no-such-command", nil, nil)
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "unknown cluster command no-such-command") {
		t.Errorf("refused command: %v, want ErrInvalidArgument with the node's message", err)
	}
	if err := c.Admin(ctx, "echo", func() {}, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("arguments that are not JSON: %v, want ErrInvalidArgument", err)
	}
}
