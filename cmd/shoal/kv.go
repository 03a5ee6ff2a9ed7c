package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/wire"
)

// target holds the flags that say how to reach a cluster and how to answer.
type target struct {
	cluster    string
	seeds      string
	secretFile string
	insecure   bool
	json       bool
	timeout    time.Duration
}

func (t *target) register(fs *flag.FlagSet) {
	fs.StringVar(&t.cluster, "cluster", "", "cluster spec `FILE` (cluster.json) to find the nodes in")
	fs.StringVar(&t.seeds, "seeds", "", "comma-separated client `ADDRS` (host:port) of some nodes")
	fs.StringVar(&t.secretFile, "secret-file", "", "the cluster's secret `FILE` (default: $SHOAL_SECRET_FILE, or secret beside the cluster file)")
	fs.BoolVar(&t.insecure, "insecure", false, "talk to a cluster run with --insecure")
	fs.BoolVar(&t.json, "json", false, "print machine-readable JSON")
	fs.DurationVar(&t.timeout, "timeout", 5*time.Second, "give up after this long")
}

// resolve finds the seeds and the secret. The seeds come from, in order:
// --seeds, --cluster, SHOAL_SEEDS, SHOAL_CLUSTER; the secret from
// --secret-file, SHOAL_SECRET_FILE, or beside the cluster file, and is
// checked against the cluster's spec when there is one.
func (t *target) resolve() (seeds []string, keys *wire.Keyring, err error) {
	file := t.cluster
	if file == "" && t.seeds == "" && os.Getenv("SHOAL_SEEDS") == "" {
		file = os.Getenv("SHOAL_CLUSTER")
	}
	var spec *server.Spec
	switch {
	case t.seeds != "":
		seeds = strings.Split(t.seeds, ",")
	case file != "":
		if spec, err = server.LoadSpec(file); err != nil {
			return nil, nil, err
		}
		for _, n := range spec.Nodes {
			seeds = append(seeds, n.Client)
		}
	case os.Getenv("SHOAL_SEEDS") != "":
		seeds = strings.Split(os.Getenv("SHOAL_SEEDS"), ",")
	default:
		return nil, nil, fmt.Errorf("%w: no cluster given: use --cluster FILE, --seeds ADDRS or SHOAL_SEEDS", errUsage)
	}
	if t.insecure {
		if t.secretFile != "" {
			return nil, nil, fmt.Errorf("%w: --insecure with --secret-file", errUsage)
		}
		return seeds, nil, nil
	}
	if spec == nil && file != "" {
		spec, _ = server.LoadSpec(file) // only to check the secret against
	}
	keys, err = loadSecret(t.secretFile, file, spec)
	return seeds, keys, err
}

func (t *target) connect(ctx context.Context, stderr io.Writer) (*client.Client, error) {
	seeds, keys, err := t.resolve()
	if err != nil {
		return nil, err
	}
	return client.New(ctx, client.Config{
		Seeds:    seeds,
		Secret:   keys,
		Insecure: keys == nil,
		Logger:   slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
}

// clientCommand parses the command line of a command that talks to a
// cluster (get, set, del, cluster status) and runs body with a connected
// client.
func clientCommand(ctx context.Context, name string, args []string, nargs int, form string, stderr io.Writer,
	extra func(*flag.FlagSet), body func(context.Context, *client.Client, *target, []string) error) error {
	fs := newFlagSet(name, stderr)
	var t target
	t.register(fs)
	if extra != nil {
		extra(fs)
	}
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, nargs, form); err != nil {
		return err
	}
	// With the deadline, a request rides out a failover: its attempts go
	// on, under one sequence number, until --timeout.
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	c, err := t.connect(ctx, stderr)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	return body(ctx, c, &t, pos)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	return enc.Encode(v)
}

// jsonValue puts a value into a JSON object: as "value" when it is UTF-8
// text, as "value_base64" otherwise, since JSON strings cannot carry
// arbitrary bytes.
func jsonValue(obj map[string]any, v []byte) {
	if utf8.Valid(v) {
		obj["value"] = string(v)
	} else {
		obj["value_base64"] = base64.StdEncoding.EncodeToString(v)
	}
}

func getCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var stale bool
	return clientCommand(ctx, "get", args, 1, "KEY", stderr,
		func(fs *flag.FlagSet) {
			fs.BoolVar(&stale, "stale", false, "read the chosen replica's state without confirming it is current")
		},
		func(ctx context.Context, c *client.Client, t *target, pos []string) error {
			var opts []client.ReadOption
			if stale {
				opts = append(opts, client.Stale())
			}
			it, err := c.Get(ctx, pos[0], opts...)
			if errors.Is(err, client.ErrNotFound) {
				return fmt.Errorf("%q: key not found", pos[0])
			}
			if err != nil {
				return err
			}
			if t.json {
				obj := map[string]any{"key": it.Key, "version": it.Version}
				jsonValue(obj, it.Value)
				return printJSON(stdout, obj)
			}
			_, err = fmt.Fprintf(stdout, "%s\n", it.Value)
			return err
		})
}

func setCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return clientCommand(ctx, "set", args, 2, "KEY VALUE", stderr, nil,
		func(ctx context.Context, c *client.Client, t *target, pos []string) error {
			v, err := c.Set(ctx, pos[0], []byte(pos[1]))
			if err != nil {
				return err
			}
			if t.json {
				return printJSON(stdout, map[string]any{"key": pos[0], "version": v})
			}
			_, err = fmt.Fprintln(stdout, "OK")
			return err
		})
}

func delCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return clientCommand(ctx, "del", args, 1, "KEY", stderr, nil,
		func(ctx context.Context, c *client.Client, t *target, pos []string) error {
			err := c.Delete(ctx, pos[0])
			if errors.Is(err, client.ErrNotFound) {
				return fmt.Errorf("%q: key not found", pos[0])
			}
			if err != nil {
				return err
			}
			if t.json {
				return printJSON(stdout, map[string]any{"key": pos[0], "deleted": true})
			}
			_, err = fmt.Fprintln(stdout, "OK")
			return err
		})
}
