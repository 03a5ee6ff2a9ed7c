package client_test

import (
	"context"
	"errors"
	"testing"

	"github.com/shoal-kv/shoal/client"
)

// Requeue takes dead jobs only: one that is not dead fails with its own
// sentinel, not with a version conflict, and an unknown one is not found.
func TestRequeueOfALiveJob(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	id, err := c.Enqueue(ctx, "requeue-live", []byte("p"), client.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Requeue(ctx, id)
	if !errors.Is(err, client.ErrWrongState) {
		t.Errorf("requeue of a queued job: %v, want ErrWrongState", err)
	}
	if errors.Is(err, client.ErrVersionConflict) {
		t.Errorf("requeue of a queued job matches ErrVersionConflict: %v", err)
	}
	if err := c.Requeue(ctx, "j000.no-such-job"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("requeue of an unknown job: %v, want ErrNotFound", err)
	}
}
