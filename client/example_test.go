package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/shoal-kv/shoal/client"
)

// The README's example: connect through the seeds in SHOAL_SEEDS (TestMain
// starts a cluster and sets it), write, read, compare-and-set.
func Example() {
	ctx := context.Background()
	c, err := client.New(ctx, client.Config{Seeds: strings.Split(os.Getenv("SHOAL_SEEDS"), ",")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(ctx)

	v, err := c.Set(ctx, "user:42", []byte("Ada"))
	if err != nil {
		log.Fatal(err)
	}
	it, err := c.Get(ctx, "user:42") // linearizable from any replica
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", it.Value)

	// Compare-and-set on the version read: only one of two racing writers wins.
	if _, err := c.CompareAndSet(ctx, "user:42", v, []byte("Ada Lovelace")); err != nil {
		log.Fatal(err)
	}
	_, err = c.CompareAndSet(ctx, "user:42", v, []byte("Grace"))
	fmt.Println(errors.Is(err, client.ErrVersionConflict))
	// Output:
	// Ada
	// true
}

// A worker in a few lines: it acquires jobs of a topic four at a time,
// keeps their leases while the handler runs, and completes each job whose
// handler returns nil (a failed or panicking handler fails its job, which
// runs again after a backoff).
func ExampleWorker() {
	ctx := context.Background()
	c, err := client.New(ctx, client.Config{Seeds: strings.Split(os.Getenv("SHOAL_SEEDS"), ",")})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Enqueue(ctx, "emails", []byte("welcome ada@example.com"), client.EnqueueOptions{}); err != nil {
		log.Fatal(err)
	}

	ctx, stop := context.WithCancel(ctx)
	w := &client.Worker{Client: c, Topic: "emails", Concurrency: 4,
		Handler: func(ctx context.Context, job *client.Job) error {
			fmt.Printf("sending %s\n", job.Payload)
			stop() // one is enough here; the job in hand still completes
			return nil
		}}
	w.Run(ctx)
	fmt.Println(w.Counters().Completed, "completed")
	// Output:
	// sending welcome ada@example.com
	// 1 completed
}
