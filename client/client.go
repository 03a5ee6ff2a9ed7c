package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-kv/shoal/wire"
)

// receiveErrorPause keeps a persistently failing socket from spinning the
// receive loop.
const receiveErrorPause = 10 * time.Millisecond

// Defaults of Config.
const (
	DefaultAttempts              = 3
	DefaultMinAttemptTimeout     = 20 * time.Millisecond
	DefaultMaxAttemptTimeout     = 2 * time.Second
	DefaultInitialAttemptTimeout = 250 * time.Millisecond
	DefaultReplyGrace            = 500 * time.Millisecond
	DefaultNodeTimeout           = time.Second
	DefaultKeepaliveInterval     = 5 * time.Second
	// DefaultTemperature is the temperature of the default picker, a
	// Softmin over each node's load in requests in progress.
	DefaultTemperature = 1.0
)

// Config configures a Client.
type Config struct {
	// Seeds are client addresses ("host:port") of some of the cluster's
	// nodes. The client learns every node and the shard map from the
	// first that answers.
	Seeds []string
	// Attempts is how many times a request whose context has no deadline
	// is sent, with the same client id and sequence number, before it
	// fails with ErrUnavailable. A request whose context has a deadline
	// is sent again, under the same id and number, until the deadline
	// (or a cancel) ends it, with an error that wraps the context's. If
	// zero, DefaultAttempts.
	Attempts int
	// Picker chooses among a shard's live replicas by their load. If nil,
	// a Softmin at DefaultTemperature.
	Picker Picker
	// IgnoreInFlight leaves this client's own requests in flight at each
	// node (those with an attempt sent there, until the request ends) out
	// of the load the picker weighs, which is then only what the nodes last
	// reported.
	IgnoreInFlight bool
	// Transport carries the client's datagrams. If nil, the client opens
	// a UDP socket on a free port. The client owns and closes either.
	Transport wire.Transport
	// Secret holds the cluster's secrets: the client seals every datagram
	// it sends with the first and opens only replies and heartbeats sealed
	// with one of them, dropping any other (wire.Seal). If nil, New loads
	// it from SecretFile, or else from the file named by the environment
	// variable SHOAL_SECRET_FILE; with none of them, New fails with
	// ErrAuth unless Insecure.
	Secret     *wire.Keyring
	SecretFile string
	// Insecure sends datagrams unsealed, to a cluster whose nodes run
	// insecure (for a trusted network only). It excludes a secret.
	Insecure bool
	// MinAttemptTimeout and MaxAttemptTimeout bound the wait for a reply
	// to one attempt, otherwise derived from measured round trips (srtt +
	// 4·rttvar, and at least 1.5 times about the 99th percentile of recent
	// ones, up to 8 times srtt) and doubled for each earlier attempt of
	// the same request that got no reply, or that a node answered
	// "unavailable" having spent its budget. InitialAttemptTimeout, at most
	// MaxAttemptTimeout, is used before the first measurement. Zero values
	// take the defaults.
	MinAttemptTimeout, MaxAttemptTimeout, InitialAttemptTimeout time.Duration
	// ReplyGrace: a request whose every attempt timed out still takes a
	// late reply to any of them until ReplyGrace has passed since it
	// began, before it fails with ErrUnavailable; under load, replies
	// come late rather than not at all. It sends nothing more, and tells
	// the nodes they may work on each attempt until then. (A request
	// whose context has a deadline keeps sending attempts instead, and
	// takes a late reply to any of its latest ones until the deadline.)
	// If zero, DefaultReplyGrace; if negative, none.
	ReplyGrace time.Duration
	// NodeTimeout is how long a node may go unheard (no heartbeat, no
	// reply) before the client stops picking it. If zero,
	// DefaultNodeTimeout.
	NodeTimeout time.Duration
	// LongPoll bounds how long one acquire request waits at a node for a
	// job (Acquire asks again until its context ends). If zero,
	// DefaultLongPoll.
	LongPoll time.Duration
	// KeepaliveInterval: a node sent nothing for this long gets a ping,
	// so that it keeps heartbeating to the client (and a node that came
	// back is noticed). If zero, DefaultKeepaliveInterval.
	KeepaliveInterval time.Duration
	// Logger receives the client's logs. If nil, slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns a Config with every field at its default; the
// caller sets Seeds.
func DefaultConfig() Config {
	var c Config
	c.setDefaults()
	return c
}

// setDefaults gives every zero field its default.
func (c *Config) setDefaults() {
	if c.Attempts == 0 {
		c.Attempts = DefaultAttempts
	}
	if c.Picker == nil {
		c.Picker = &Softmin{temperature: DefaultTemperature, rng: newLockedRand(nil)}
	}
	if c.MinAttemptTimeout == 0 {
		c.MinAttemptTimeout = DefaultMinAttemptTimeout
	}
	if c.MaxAttemptTimeout == 0 {
		c.MaxAttemptTimeout = DefaultMaxAttemptTimeout
	}
	if c.InitialAttemptTimeout == 0 {
		c.InitialAttemptTimeout = DefaultInitialAttemptTimeout
	}
	if c.ReplyGrace == 0 {
		c.ReplyGrace = DefaultReplyGrace
	}
	if c.NodeTimeout == 0 {
		c.NodeTimeout = DefaultNodeTimeout
	}
	if c.KeepaliveInterval == 0 {
		c.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if c.LongPoll == 0 {
		c.LongPoll = DefaultLongPoll
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// ErrInvalidConfig is returned (wrapped) by Config.Validate, and so by New,
// for a configuration the client cannot work with.
var ErrInvalidConfig = errors.New("client: invalid config")

// Validate reports whether the client can work with c, its zero fields
// taking their defaults: seeds that parse as host:port, no negative counts
// or durations (but ReplyGrace, where negative means none), and
// MinAttemptTimeout <= MaxAttemptTimeout. New returns its error.
func (c Config) Validate() error {
	if len(c.Seeds) == 0 {
		return fmt.Errorf("%w: no seeds", ErrInvalidConfig)
	}
	for _, s := range c.Seeds {
		if _, err := wire.ParseAddr(s); err != nil {
			return fmt.Errorf("%w: seed %q: %v", ErrInvalidConfig, s, err)
		}
	}
	if c.Attempts < 0 {
		return fmt.Errorf("%w: Attempts is %d", ErrInvalidConfig, c.Attempts)
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{
		{"MinAttemptTimeout", c.MinAttemptTimeout}, {"MaxAttemptTimeout", c.MaxAttemptTimeout},
		{"InitialAttemptTimeout", c.InitialAttemptTimeout}, {"NodeTimeout", c.NodeTimeout},
		{"LongPoll", c.LongPoll}, {"KeepaliveInterval", c.KeepaliveInterval},
	} {
		if d.d < 0 {
			return fmt.Errorf("%w: %s is negative (%v)", ErrInvalidConfig, d.name, d.d)
		}
	}
	c.setDefaults()
	if c.Insecure && (c.Secret != nil || c.SecretFile != "") {
		return fmt.Errorf("%w: Insecure with a secret", ErrInvalidConfig)
	}
	if c.MinAttemptTimeout > c.MaxAttemptTimeout {
		return fmt.Errorf("%w: MinAttemptTimeout %v is above MaxAttemptTimeout %v", ErrInvalidConfig,
			c.MinAttemptTimeout, c.MaxAttemptTimeout)
	}
	return nil
}

// Client talks to a shoal cluster. It routes each read to a replica of its
// key's shard chosen by the Picker, and each write first to the shard's
// leader as far as it knows it, retries lost requests, and keeps its
// view of the cluster fresh from the nodes' heartbeats. A Client is safe
// for concurrent use; each concurrent call is one request in flight.
type Client struct {
	cfg    Config
	id     string
	proof  string // proves id is this client's (wire.ClientIdentity)
	t      wire.Transport
	sealed *wire.SealedTransport // t, unless insecure
	picker Picker
	log    *slog.Logger
	view   atomic.Pointer[view]
	seq    *sequencer
	rtt    [2]rttEstimator // by mutating: reads and writes take different times

	mu      sync.Mutex
	pending map[uint64]*call
	closing bool           // Close has begun: no new calls
	closed  bool           // done is closed: no new background work
	calls   sync.WaitGroup // public calls in flight
	bg      sync.WaitGroup // background work; ends promptly once done is closed

	requests, attempts, retries, timeouts, failures atomic.Uint64
	empty                                           emptyMarks

	refresh   chan struct{} // asks maintain to fetch the topology again
	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// keptAttempts is how many of a request's latest attempts take a late
// reply. A request retried until a distant deadline sends an attempt every
// MaxAttemptTimeout at most; keeping only the latest bounds what it holds
// (its entries in Client.pending and call.sent) however long it runs,
// while still covering several of the longest attempt timeouts.
const keptAttempts = 8

// call collects the replies to the attempts of one request.
type call struct {
	// replies buffers keptAttempts replies; the reader drops more.
	replies chan reply
	// sent holds the latest attempts, oldest first; only do and await
	// touch it. Invariant: len(sent) <= keptAttempts, and
	// Client.pending maps the tx of each to this call.
	sent []sending
}

// sending is one attempt of a request: its transaction id and when it was
// sent.
type sending struct {
	tx uint64
	at time.Time
}

// sentAt returns when the attempt with transaction id tx was sent, and
// false if it is no longer kept.
func (cl *call) sentAt(tx uint64) (time.Time, bool) {
	for _, a := range cl.sent {
		if a.tx == tx {
			return a.at, true
		}
	}
	return time.Time{}, false
}

// track registers the attempt a of request cl for its replies, and stops
// taking replies to the oldest attempt kept once keptAttempts are.
func (c *Client) track(cl *call, a sending) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(cl.sent) == keptAttempts {
		delete(c.pending, cl.sent[0].tx)
		cl.sent = append(cl.sent[:0], cl.sent[1:]...)
	}
	cl.sent = append(cl.sent, a)
	c.pending[a.tx] = cl
}

type reply struct {
	msg wire.Message
	at  time.Time
}

// Counters counts a client's requests.
type Counters struct {
	// Requests is every call made; Attempts every datagram sent for them,
	// and Retries those of them past a request's first. (A request can
	// end before its first attempt, when its context does.)
	Requests, Attempts, Retries uint64
	// Timeouts counts attempts that got no reply in time; Failures counts
	// calls that ended in ErrUnavailable.
	Timeouts, Failures uint64
	// Unauthenticated counts the datagrams dropped because they did not
	// open with the cluster's secret: forged or replayed replies and
	// heartbeats, or a node with another secret.
	Unauthenticated uint64
	// RTT is the smoothed round trip time of reads.
	RTT time.Duration
}

// New connects to the cluster through cfg.Seeds: it learns the nodes and
// the shard map and subscribes to the nodes' heartbeats. It fails with
// cfg.Validate's error for a configuration that cannot work, and with
// ErrUnavailable if no seed answers before ctx ends.
func New(ctx context.Context, cfg Config) (*Client, error) {
	// The client owns cfg.Transport from here, also when New fails.
	fail := func(err error) (*Client, error) {
		if cfg.Transport != nil {
			cfg.Transport.Close()
		}
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return fail(err)
	}
	cfg.setDefaults()
	seeds := make([]netip.AddrPort, len(cfg.Seeds))
	for i, s := range cfg.Seeds {
		seeds[i], _ = wire.ParseAddr(s) // Validate parsed them
	}
	keys, err := cfg.keyring()
	if err != nil {
		return fail(err)
	}
	// The id is new for every client, never reused: the cluster keeps the
	// results of a client's writes under it for an hour, and a second
	// client with the same id and sequence numbers would be answered from
	// them instead of being applied. Only this client knows its proof.
	ident := wire.NewClientIdentity()
	c := &Client{
		cfg:     cfg,
		id:      ident.ID,
		proof:   ident.Proof,
		t:       cfg.Transport,
		picker:  cfg.Picker,
		log:     cfg.Logger.With("client", ident.ID),
		seq:     newSequencer(),
		pending: make(map[uint64]*call),
		refresh: make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	for i := range c.rtt {
		c.rtt[i] = rttEstimator{min: cfg.MinAttemptTimeout, max: cfg.MaxAttemptTimeout, initial: cfg.InitialAttemptTimeout}
	}
	if c.t == nil {
		u, err := wire.ListenUDP(":0")
		if err != nil {
			return nil, err
		}
		c.t = u
	}
	if keys != nil {
		c.sealed = wire.Seal(c.t, keys, wire.ClientSide)
		c.t = c.sealed
	}
	c.wg.Add(1)
	go c.receive()
	topo, err := c.fetchTopology(ctx, seeds)
	if err == nil {
		err = c.setTopology(topo)
	}
	if err != nil {
		c.Close(ctx)
		return nil, err
	}
	c.pingAll(time.Now(), 0)
	c.wg.Add(1)
	go c.maintain()
	return c, nil
}

// ID returns the client's id, random and unique to this client.
func (c *Client) ID() string { return c.id }

// Close stops the client. New calls fail with ErrClosed at once; calls in
// flight may finish until ctx ends, and then fail with ErrClosed. It closes
// the transport and waits for the client's goroutines.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	drained := make(chan struct{})
	go func() {
		c.calls.Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-ctx.Done():
	}
	var err error
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		close(c.done)
		c.mu.Unlock()
		err = c.t.Close()
		c.wg.Wait()
		c.bg.Wait()
	})
	<-drained // calls still running end now that done is closed
	return err
}

// background runs f in a goroutine that Close waits for after closing the
// client (f must end promptly then), and reports false, not running f, if
// the client is closed already.
func (c *Client) background(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		f()
	}()
	return true
}

// enter admits a public call unless the client is closing; the caller
// must call c.calls.Done when it returns.
func (c *Client) enter() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return ErrClosed
	}
	c.calls.Add(1)
	return nil
}

// Counters returns the client's counters.
func (c *Client) Counters() Counters {
	n := Counters{
		Requests: c.requests.Load(),
		Attempts: c.attempts.Load(),
		Retries:  c.retries.Load(),
		Timeouts: c.timeouts.Load(),
		Failures: c.failures.Load(),
		RTT:      c.rtt[0].smoothed(),
	}
	if c.sealed != nil {
		n.Unauthenticated = c.sealed.Rejected()
	}
	return n
}

// receive dispatches incoming datagrams until the transport closes.
func (c *Client) receive() {
	defer c.wg.Done()
	buf := make([]byte, wire.MaxDatagramSize+1)
	for {
		n, _, _, err := c.t.Receive(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Transient: an ICMP error surfacing on some systems.
			c.log.Warn("receiving a datagram failed", "err", err)
			time.Sleep(receiveErrorPause)
			continue
		}
		m, err := wire.Decode(buf[:n])
		if err != nil {
			continue
		}
		now := time.Now()
		v := c.view.Load()
		if v != nil {
			if nd := v.nodes[m.Node]; nd != nil {
				nd.heard.Store(now.UnixNano())
				nd.activity.Store(m.Activity)
			}
		}
		switch m.Type {
		case wire.TypeHeartbeat:
			if v != nil {
				if nd := v.nodes[m.Node]; nd != nil {
					nd.heartbeats.Add(1)
					leads := m.Heartbeat.Leads
					nd.leads.Store(&leads)
					nd.ready.Store(&readyReport{at: now, counts: m.Heartbeat.Ready})
					v.leaders.heard(v, nd.id, leads)
				}
				if m.Heartbeat.MapVersion > v.smap.Version {
					c.requestRefresh()
				}
			}
		case wire.TypeResponse, wire.TypeError:
			if v != nil && m.Leader != nil && v.nodes[m.Node] != nil {
				v.leaders.named(v, m.Leader)
			}
			c.mu.Lock()
			cl := c.pending[m.TxID]
			c.mu.Unlock()
			if cl != nil {
				select {
				case cl.replies <- reply{msg: m, at: now}:
				default: // the call has its answer already
				}
			}
		}
	}
}

// target is where one attempt goes.
type target struct {
	addr netip.AddrPort
	node *node // nil for an address not (yet) known as a node
}

// router chooses the target of each attempt, called once before each;
// tried holds the distinct targets of the request's earlier attempts, so
// never more than there are nodes however many attempts a request makes.
type router func(tried []netip.AddrPort) (target, error)

// attemptLimit says when a request stops sending attempts: after n of them,
// or, if toDeadline and the request's context has a deadline, when the
// deadline comes, however many that takes.
type attemptLimit struct {
	n          int
	toDeadline bool
}

// untilDeadline limits a request to its context's deadline, or to n
// attempts if its context has none.
func untilDeadline(n int) attemptLimit { return attemptLimit{n: n, toDeadline: true} }

// atMost limits a request to n attempts, deadline or not.
func atMost(n int) attemptLimit { return attemptLimit{n: n} }

// Backoff after an error reply or a failed send, before the next attempt:
// doubling from minRetryBackoff up to maxRetryBackoff, then jittered to
// between half and all of that, so that the requests one outage failed
// together do not come back together. A request retried until a distant
// deadline through a long outage then asks about twice a second.
const (
	minRetryBackoff = 5 * time.Millisecond
	maxRetryBackoff = 500 * time.Millisecond
)

// request runs a public call's request, admitted unless the client is
// closing.
func (c *Client) request(ctx context.Context, op wire.Op, args wire.Args, route router, wait time.Duration) (wire.Message, error) {
	if err := c.enter(); err != nil {
		return wire.Message{}, err
	}
	defer c.calls.Done()
	return c.do(ctx, op, args, route, untilDeadline(c.cfg.Attempts), wait)
}

// do runs one request to completion: attempts to the targets route gives,
// all with the same client id and sequence number, so that the cluster
// applies a write at most once however many arrive, until one is answered
// or limit stops them. An attempt waits for the timeout measured round
// trips give, plus wait, the time the node may hold the request (a
// long-poll). A request whose context ends fails with an error wrapping
// the context's; one limited to n attempts that all failed, with
// ErrUnavailable.
func (c *Client) do(ctx context.Context, op wire.Op, args wire.Args, route router, limit attemptLimit, wait time.Duration) (wire.Message, error) {
	select {
	case <-c.done:
		return wire.Message{}, ErrClosed
	default:
	}
	c.requests.Add(1)
	mutating := op.Mutating()
	seq := c.seq.begin(mutating)
	defer c.seq.end(seq)
	est := &c.rtt[0]
	if mutating {
		est = &c.rtt[1]
	}
	deadline, hasDeadline := ctx.Deadline()
	toDeadline := limit.toDeadline && hasDeadline
	// One reply fits per kept attempt: replies that come while no one
	// reads (during a backoff) cannot fill the buffer and crowd out a
	// later answer, which would be dropped.
	cl := &call{replies: make(chan reply, keptAttempts), sent: make([]sending, 0, keptAttempts)}
	defer func() {
		c.mu.Lock()
		for _, a := range cl.sent {
			delete(c.pending, a.tx)
		}
		c.mu.Unlock()
	}()

	var tried []netip.AddrPort
	var charged []*node // nodes whose in-flight count holds this request
	defer func() {
		for _, n := range charged {
			n.inFlight.Add(-1)
		}
	}()
	var lastErr error
	begin := time.Now()
	sent := 0        // attempts sent, or that failed to send
	timeouts := 0    // attempts of this request that got no reply
	replied := false // some attempt got a reply
	// outlasted counts the attempts a node answered "unavailable" having
	// spent their budget: like a timeout, the next attempt gets twice as
	// long, but, being a reply, they teach the estimator nothing.
	outlasted := 0
	// moving counts the replies that said the request's slot is moving,
	// or that the map it was routed by is out of date.
	moving := 0
	// noReply records, for the estimator, a request that ends with none of
	// its attempts answered though some timed out.
	noReply := func() {
		if !replied && timeouts > 0 {
			est.tooShort()
		}
	}
	// ended is the error of the request once its context ended (cause is
	// the context's error) or the client closed.
	ended := func(cause error) error {
		if errors.Is(cause, ErrClosed) {
			return cause
		}
		noReply()
		if lastErr == nil {
			return fmt.Errorf("shoal: %s: %w after %d attempts", op, cause, sent)
		}
		return fmt.Errorf("shoal: %s: %w after %d attempts (last error: %v)", op, cause, sent, lastErr)
	}
	for attempt := 0; toDeadline || attempt < limit.n; attempt++ {
		tg, err := route(tried)
		if err != nil {
			return wire.Message{}, err
		}
		if !slices.Contains(tried, tg.addr) {
			tried = append(tried, tg.addr)
		}
		timeout := est.timeout(timeouts+outlasted) + wait
		// The node may work on the attempt for as long as the request
		// takes a reply to it: at least until the reply grace ends.
		budget := max(timeout, c.cfg.ReplyGrace-time.Since(begin))
		if hasDeadline {
			left := time.Until(deadline)
			timeout, budget = min(timeout, left), min(budget, left)
		}
		if timeout <= 0 {
			return wire.Message{}, ended(context.DeadlineExceeded)
		}
		tx, start := newTxID(), time.Now()
		c.track(cl, sending{tx, start})
		m := wire.Message{
			Type: wire.TypeQuery, TxID: tx, Op: op,
			Client: c.id, Proof: c.proof, Seq: seq, Ack: c.seq.floor(), Timeout: budget, Args: args,
		}
		if attempt > 0 {
			// A retry says how old it is: a shard that forgot sessions
			// since refuses it rather than apply it twice.
			m.Age = min(max(time.Since(begin), time.Millisecond), wire.MaxDuration)
		}
		b, err := wire.Encode(&m)
		if err != nil {
			return wire.Message{}, err
		}
		sent++
		c.attempts.Add(1)
		if attempt > 0 {
			c.retries.Add(1)
		}
		if tg.node != nil {
			tg.node.attempts.Add(1)
			tg.node.sent.Store(start.UnixNano())
			if op.Loads() && !slices.Contains(charged, tg.node) {
				tg.node.inFlight.Add(1)
				charged = append(charged, tg.node)
			}
		}
		if err := c.t.Send(b, tg.addr); err != nil {
			lastErr = err
			if err := c.backoff(ctx, attempt); err != nil {
				return wire.Message{}, ended(err)
			}
			continue
		}
		r, err := c.await(ctx, cl, tx, timeout, est, wait > 0)
		graced := false
		if err == nil && r == nil && !toDeadline && attempt == limit.n-1 {
			// The last attempt of a request limited by count takes a
			// late reply until the grace ends; one limited by its
			// deadline sends more attempts instead. The context's
			// deadline, if sooner, ends this wait as it ends the
			// attempts'.
			if grace := c.cfg.ReplyGrace - time.Since(begin); grace > 0 {
				r, err = c.await(ctx, cl, tx, grace, est, wait > 0)
				graced = true
			}
		}
		switch {
		case err != nil:
			return wire.Message{}, ended(err)
		case r == nil:
			c.timeouts.Add(1)
			timeouts++
			lastErr = fmt.Errorf("no reply from %s within %v", tg, timeout)
			if graced {
				lastErr = fmt.Errorf("no reply to any attempt within %v", time.Since(begin).Round(time.Millisecond))
			}
			continue
		case r.Type == wire.TypeResponse:
			return *r, nil
		}
		replied = true
		e := replyError(r)
		if !e.retryable() {
			return *r, e
		}
		lastErr = e
		switch e.Code {
		case wire.CodeWrongShard, wire.CodeMoving:
			if e.Code == wire.CodeWrongShard {
				c.requestRefresh()
			}
			// A slot moving between shards pauses its requests for a
			// moment, and the map changes after: neither counts as a
			// failed attempt, for up to maxMovingWait.
			if time.Since(begin) < maxMovingWait {
				attempt--
				if err := c.movingBackoff(ctx, &moving); err != nil {
					return wire.Message{}, ended(err)
				}
				continue
			}
		case wire.CodeUnavailable:
			outlasted++
		}
		if err := c.backoff(ctx, attempt); err != nil {
			return wire.Message{}, ended(err)
		}
	}
	c.failures.Add(1)
	noReply()
	return wire.Message{}, fmt.Errorf("%w: %s after %d attempts: %v", ErrUnavailable, op, sent, lastErr)
}

// await waits for a reply to the request. A success or a definitive error
// from any attempt counts; a retryable error only from the latest attempt,
// tx. It returns nil, nil on timeout, and the context's error if it ends.
//
// Every reply is a round trip to measure, also one to an earlier attempt:
// each attempt has a transaction id of its own, so unlike a TCP segment's
// retransmission (Karn's rule) the reply says which send it answers. Were
// those replies left out, a client whose timeout fell below the cluster's
// round trip under load would never measure one, and would retry every
// request until it failed. Replies to a request the node was allowed to
// hold (waited) are not round trips and are not measured, nor is a reply
// to an attempt no longer kept (keptAttempts), whose send time is gone.
func (c *Client) await(ctx context.Context, cl *call, tx uint64, timeout time.Duration, est *rttEstimator, waited bool) (*wire.Message, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case r := <-cl.replies:
			// A node that answers "unavailable" waited out the attempt's
			// budget: that is no round trip, and timing it would feed the
			// timeout back into itself.
			if !waited && (r.msg.Err == nil || r.msg.Err.Code != wire.CodeUnavailable) {
				if at, ok := cl.sentAt(r.msg.TxID); ok {
					est.sample(r.at.Sub(at))
				}
			}
			// An earlier attempt's retryable error is stale: the latest
			// attempt may still succeed. A definitive one (not found, a
			// conflict) answers the request: every attempt carries the
			// same sequence number.
			if r.msg.TxID != tx && r.msg.Type != wire.TypeResponse && replyError(&r.msg).retryable() {
				continue
			}
			return &r.msg, nil
		case <-timer.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.done:
			return nil, ErrClosed
		}
	}
}

// backoff waits before the attempt after attempt, which failed with an
// error reply or a failed send: a node without a leader answers fast, and
// retrying at once would only spin. (An attempt that timed out has waited
// already, twice as long as the one before it.) It returns the context's
// error if the context ends first.
func (c *Client) backoff(ctx context.Context, attempt int) error {
	return c.sleep(ctx, min(minRetryBackoff<<min(attempt, 10), maxRetryBackoff))
}

// sleep waits between half of d and d, at random, or until ctx ends or
// the client closes.
func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d/2 + mrand.N(d/2+1))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return ErrClosed
	}
}

// maxMovingWait bounds how long a request waits, without counting its
// attempts, for its slot to finish moving between shards and for the new
// map: a move pauses the slots' requests for about a second.
const maxMovingWait = 10 * time.Second

// movingBackoff waits before the next attempt of a request whose slot is
// moving: 5 ms after the first such reply, twice as long after each
// next, up to 100 ms.
func (c *Client) movingBackoff(ctx context.Context, moving *int) error {
	d := min(5*time.Millisecond<<min(*moving, 5), 100*time.Millisecond)
	*moving++
	return c.sleep(ctx, d)
}

// newTxID returns a random transaction id: 63 bits, never 0, so that a
// reply cannot be forged without seeing the query.
func newTxID() uint64 {
	for {
		if tx := mrand.Uint64() >> 1; tx != 0 {
			return tx
		}
	}
}

func replyError(m *wire.Message) *Error {
	e := &Error{Node: m.Node, Code: wire.CodeGeneric, Message: "error reply without an error", Version: m.Result.Version}
	if m.Err != nil {
		e.Code, e.Message = m.Err.Code, m.Err.Message
	}
	return e
}

func (t target) String() string {
	if t.node != nil {
		return t.node.id
	}
	return t.addr.String()
}
