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
