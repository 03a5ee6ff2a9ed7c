package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/shoal-kv/shoal/client"
)

func enqueueCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var opts client.EnqueueOptions
	return clientCommand(ctx, "enqueue", args, 2, "TOPIC PAYLOAD", stderr,
		func(fs *flag.FlagSet) {
			fs.DurationVar(&opts.Delay, "delay", 0, "hold the job back this long")
			fs.StringVar(&opts.Key, "key", "", "uniqueness key: while a job with it is not done, return that job")
			fs.IntVar(&opts.MaxAttempts, "max-attempts", 0, "attempts before the job is dead (default 25)")
		},
		func(ctx context.Context, c *client.Client, t *target, pos []string) error {
			id, err := c.Enqueue(ctx, pos[0], []byte(pos[1]), opts)
			if err != nil {
				return err
			}
			if t.json {
				return printJSON(stdout, map[string]any{"id": id})
			}
			_, err = fmt.Fprintln(stdout, id)
			return err
		})
}

// acquireCmd waits up to --wait for a job; its --timeout is ignored in
// favour of the wait.
func acquireCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	lease, wait := 30*time.Second, 5*time.Second
	return clientCommand(ctx, "acquire", args, 1, "TOPIC", stderr,
		func(fs *flag.FlagSet) {
			fs.DurationVar(&lease, "lease", lease, "how long the job is yours unless extended")
			fs.DurationVar(&wait, "wait", wait, "how long to wait for a ready job")
		},
		func(ctx context.Context, c *client.Client, t *target, pos []string) error {
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wait)
			defer cancel()
			j, err := c.Acquire(wctx, pos[0], lease)
			if errors.Is(err, client.ErrNoJob) {
				return fmt.Errorf("no job of %q ready within %v", pos[0], wait)
			}
			if err != nil {
				return err
			}
			if t.json {
				obj := map[string]any{
					"id": j.ID, "topic": j.Topic, "attempt": j.Attempt, "token": j.Token, "lease": leaseOf(j),
					"deadline": j.Deadline.UTC().Format(time.RFC3339Nano),
				}
				if utf8.Valid(j.Payload) {
					obj["payload"] = string(j.Payload)
				} else {
					obj["payload_base64"] = base64.StdEncoding.EncodeToString(j.Payload)
				}
				return printJSON(stdout, obj)
			}
			_, err = fmt.Fprintf(stdout, "%s\t%s\tattempt %d\tuntil %s\n%s\n", j.ID, leaseOf(j), j.Attempt,
				j.Deadline.Format(time.RFC3339Nano), j.Payload)
			return err
		})
}

// leaseOf returns what the CLI prints of a job's lease, and takes back
// to act on it: TOKEN:GRANT, the fencing token in decimal and the grant in
// hex.
func leaseOf(j *client.Job) string { return fmt.Sprintf("%d:%016x", j.Token, j.Grant) }

// leasedJob parses the ID LEASE arguments of extend, complete and fail.
func leasedJob(pos []string) (*client.Job, error) {
	tokText, grantText, _ := strings.Cut(pos[1], ":")
	tok, err := strconv.ParseUint(tokText, 10, 64)
	grant, gerr := strconv.ParseUint(grantText, 16, 64)
	if err != nil || gerr != nil || tok == 0 {
		return nil, fmt.Errorf("%w: lease %q is not TOKEN:GRANT as acquire prints it", errUsage, pos[1])
	}
	return &client.Job{ID: pos[0], Token: tok, Grant: grant}, nil
}

// jobCommand runs extend, complete or fail on ID LEASE.
func jobCommand(ctx context.Context, name string, args []string, stdout, stderr io.Writer,
	extra func(*flag.FlagSet), do func(context.Context, *client.Client, *client.Job) error) error {
	return clientCommand(ctx, name, args, 2, "ID LEASE", stderr, extra,
		func(ctx context.Context, c *client.Client, t *target, pos []string) error {
			j, err := leasedJob(pos)
			if err != nil {
				return err
			}
			if err := do(ctx, c, j); err != nil {
				if errors.Is(err, client.ErrLeaseLost) {
					return fmt.Errorf("job %s: lease lost: %s is not the job's live lease", j.ID, leaseOf(j))
				}
				return err
			}
			if t.json {
				obj := map[string]any{"id": j.ID, "ok": true}
				if !j.Deadline.IsZero() {
					obj["deadline"] = j.Deadline.UTC().Format(time.RFC3339Nano)
				}
				return printJSON(stdout, obj)
			}
			_, err = fmt.Fprintln(stdout, "OK")
			return err
		})
}

func extendCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var lease time.Duration
	return jobCommand(ctx, "extend", args, stdout, stderr,
		func(fs *flag.FlagSet) {
			fs.DurationVar(&lease, "lease", 0, "the new lease, from now (default: the lease's own length)")
		},
		func(ctx context.Context, c *client.Client, j *client.Job) error { return c.Extend(ctx, j, lease) })
}

func completeCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return jobCommand(ctx, "complete", args, stdout, stderr, nil,
		func(ctx context.Context, c *client.Client, j *client.Job) error { return c.Complete(ctx, j) })
}

func failCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var reason string
	return jobCommand(ctx, "fail", args, stdout, stderr,
		func(fs *flag.FlagSet) { fs.StringVar(&reason, "reason", "failed", "why the job failed") },
		func(ctx context.Context, c *client.Client, j *client.Job) error { return c.Fail(ctx, j, reason) })
}

func requeueCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return clientCommand(ctx, "requeue", args, 1, "ID", stderr, nil,
		func(ctx context.Context, c *client.Client, t *target, pos []string) error {
			if err := c.Requeue(ctx, pos[0]); err != nil {
				return err
			}
			if t.json {
				return printJSON(stdout, map[string]any{"id": pos[0], "ok": true})
			}
			_, err := fmt.Fprintln(stdout, "OK")
			return err
		})
}

func jobsCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var dead bool
	return clientCommand(ctx, "jobs", args, 1, "TOPIC", stderr,
		func(fs *flag.FlagSet) { fs.BoolVar(&dead, "dead", false, "list the dead jobs too") },
		func(ctx context.Context, c *client.Client, t *target, pos []string) error {
			st, err := c.Stats(ctx, pos[0])
			if err != nil {
				return err
			}
			var deadJobs []client.DeadJob
			if dead {
				if deadJobs, err = allDeadJobs(ctx, c, pos[0]); err != nil {
					return err
				}
			}
			if t.json {
				obj := map[string]any{"topic": pos[0], "scheduled": st.Scheduled, "ready": st.Ready,
					"leased": st.Leased, "done": st.Done, "dead": st.Dead}
				if dead {
					list := []map[string]any{}
					for _, d := range deadJobs {
						list = append(list, map[string]any{"id": d.ID, "attempts": d.Attempts, "error": d.LastError})
					}
					obj["dead_jobs"] = list
				}
				return printJSON(stdout, obj)
			}
			w := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "SCHEDULED\tREADY\tLEASED\tDONE\tDEAD")
			fmt.Fprintf(w, "%d\t%d\t%d\t%d\t%d\n", st.Scheduled, st.Ready, st.Leased, st.Done, st.Dead)
			if len(deadJobs) > 0 {
				fmt.Fprintln(w, "\nDEAD JOB\tATTEMPTS\tLAST ERROR")
				for _, d := range deadJobs {
					fmt.Fprintf(w, "%s\t%d\t%s\n", d.ID, d.Attempts, d.LastError)
				}
			}
			return w.Flush()
		})
}

// allDeadJobs lists every dead job of topic, page by page.
func allDeadJobs(ctx context.Context, c *client.Client, topic string) ([]client.DeadJob, error) {
	var all []client.DeadJob
	for cur := (&client.DeadJobCursor{}); cur != nil; {
		page, err := c.DeadJobs(ctx, topic, *cur)
		if err != nil {
			return nil, err
		}
		all = append(all, page.Jobs...)
		cur = page.Next
	}
	return all, nil
}
