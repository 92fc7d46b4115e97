package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/mcpd/mcpd/client"
)

// Outcome of an enqueue attempt as the producer saw it.
const (
	outAcked   = "acked"   // the server acknowledged it
	outRefused = "refused" // a definite error: not stored by this attempt
	outUnknown = "unknown" // the connection or deadline went first
)

// opRecord is the producer's record of one message id across its retries.
type opRecord struct {
	attempts int
	outcome  string // of the last attempt
	unknowns int    // attempts that ended with an unknown outcome
	refusals int
	lastErr  string
	dup      bool   // acknowledged as a duplicate: an earlier attempt had stored it
	env      []byte // the envelope, sent byte for byte the same on every retry

	call, ret int64 // ns since the workload began: first attempt, ack
}

// workload drives producers and consumers against a fault cluster and keeps
// the history the checker reads.
type workload struct {
	t       *testing.T
	c       *faultCluster
	queue   string
	agent   string
	start   time.Time
	ordered bool // one producer, one consumer with prefetch 1: order checked
	// expectLoss is for runs of a deliberately broken build: losses are
	// counted and returned instead of failing the test.
	expectLoss bool

	mu         sync.Mutex
	ops        map[string]*opRecord
	deliveries map[string]int
	redelivery int // deliveries with attempt > 1
	dead       int // deliveries from the dead-letter queue
	foreign    []string
	deqs       []porcupine.Operation

	stop     chan struct{}
	stopOnce sync.Once
	prodWG   sync.WaitGroup
	consWG   sync.WaitGroup
	ctx      context.Context
	cancel   context.CancelFunc
	ackErrs  atomic.Int64
	acked    atomic.Int64
	// consumerEnds counts consumers the server ended and the workload
	// started again.
	consumerEnds atomic.Int64

	faults      int
	maxRecovery time.Duration
	consumers   int
}

type workloadOpts struct {
	producers, consumers int
	ordered              bool
	// producerURLs gives producer p the node URLs it may use; default all,
	// rotated so producers spread over the nodes.
	producerURLs func(p int) []string
	consumerURLs func(i int) []string
	// attemptTimeout bounds one enqueue attempt; the producer then retries
	// the same id. Default 5s.
	attemptTimeout time.Duration
}

func (c *faultCluster) workload(queue string, o workloadOpts) *workload {
	t := c.t
	t.Helper()
	if o.attemptTimeout == 0 {
		o.attemptTimeout = 5 * time.Second
	}
	w := &workload{
		t: t, c: c, queue: queue, agent: "producer", start: time.Now(), ordered: o.ordered,
		ops: map[string]*opRecord{}, deliveries: map[string]int{}, stop: make(chan struct{}),
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	t.Cleanup(w.cancel)
	rotate := func(i int) []string { return c.urls(1 + i%len(c.nodes)) }
	if o.producerURLs == nil {
		o.producerURLs = rotate
	}
	if o.consumerURLs == nil {
		o.consumerURLs = func(i int) []string { return rotate(i + 1) }
	}
	w.startConsumers(o.consumers, o.consumerURLs)
	for p := range o.producers {
		cl := c.dial(w.ctx, w.agent, o.producerURLs(p)...)
		w.prodWG.Add(1)
		go w.produce(cl, p, o.attemptTimeout)
	}
	return w
}

// startConsumers starts n consumers; consumer i uses urls(i).
func (w *workload) startConsumers(n int, urls func(int) []string) {
	w.t.Helper()
	prefetch := 32
	if w.ordered {
		prefetch = 1
	}
	opts := client.ConsumeOptions{Prefetch: prefetch, LeaseMs: 3000}
	for i := range n {
		cl := w.c.dial(w.ctx, fmt.Sprintf("consumer-%d", i), urls(i)...)
		// A message whose deliveries all failed (its consumers' nodes
		// killed again and again) reaches max_attempts and moves to the
		// dead-letter queue: a delivery too, so consumers read both.
		for _, q := range []string{w.queue, w.queue + ".dlq"} {
			k, err := cl.Consume(w.ctx, q, opts)
			if err != nil {
				w.t.Fatalf("consume %s: %v", q, err)
			}
			w.consWG.Add(1)
			go w.consume(cl, q, k, opts)
		}
		w.consumers++
	}
}

func (w *workload) now() int64 { return time.Since(w.start).Nanoseconds() }

func (w *workload) produce(cl *client.Client, p int, attemptTimeout time.Duration) {
	defer w.prodWG.Done()
	for n := 0; ; n++ {
		select {
		case <-w.stop:
			return
		default:
		}
		id := fmt.Sprintf("p%d-%06d", p, n)
		for !w.attempt(cl, id, attemptTimeout) {
			select {
			case <-w.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// attempt makes one enqueue attempt of id and records it; true when acked.
func (w *workload) attempt(cl *client.Client, id string, timeout time.Duration) bool {
	w.mu.Lock()
	r := w.ops[id]
	if r == nil {
		env, err := cl.NewEnvelope(map[string]string{"id": id}, client.WithID(id))
		if err != nil {
			w.mu.Unlock()
			w.t.Errorf("envelope %s: %v", id, err)
			return true
		}
		r = &opRecord{call: w.now(), env: env}
		w.ops[id] = r
	}
	r.attempts++
	env := r.env
	w.mu.Unlock()

	ctx, cancel := context.WithTimeout(w.ctx, timeout)
	res, err := cl.EnqueueRaw(ctx, w.queue, env)
	cancel()
	ret := w.now()

	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		r.outcome, r.ret, r.dup = outAcked, ret, res.Dup
		w.acked.Add(1)
		return true
	}
	r.lastErr = err.Error()
	var e *client.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		// The attempt in flight when the deadline came may have been
		// stored, whatever the retries before it were told.
		r.outcome = outUnknown
		r.unknowns++
	case errors.As(err, &e) && !e.Unknown:
		r.outcome = outRefused
		r.refusals++
	default: // disconnected, deadline, or a server "unknown"
		r.outcome = outUnknown
		r.unknowns++
	}
	return false
}

func (w *workload) consume(cl *client.Client, queue string, k *client.Consumer, opts client.ConsumeOptions) {
	defer w.consWG.Done()
	var lastAck int64 // when the previous ack was sent: the next lease follows it
	for {
		d, err := k.Next(w.ctx)
		if err != nil {
			if w.ctx.Err() != nil {
				return
			}
			// The server may end a consumer (its node was declared
			// down, say); an agent consumes again, and so does this one.
			w.t.Logf("consumer ended (%v); consuming again", err)
			w.consumerEnds.Add(1)
			for {
				if k, err = cl.Consume(w.ctx, queue, opts); err == nil || w.ctx.Err() != nil {
					break
				}
				time.Sleep(100 * time.Millisecond) // a backoff, not a wait for a condition
			}
			if w.ctx.Err() != nil {
				return
			}
			continue
		}
		got := w.now()
		var env struct {
			ID   string `json:"id"`
			From string `json:"from"`
		}
		jerr := json.Unmarshal(d.Msg, &env)
		w.mu.Lock()
		switch {
		case jerr != nil:
			w.foreign = append(w.foreign, fmt.Sprintf("seq %d: %v", d.Seq, jerr))
		case env.From != w.agent || w.ops[env.ID] == nil:
			w.foreign = append(w.foreign, fmt.Sprintf("seq %d: id %q from %q", d.Seq, env.ID, env.From))
		default:
			w.deliveries[env.ID]++
			if d.Attempt > 1 {
				w.redelivery++
			}
			if d.Dead != nil {
				w.dead++
			}
			if w.ordered && w.deliveries[env.ID] == 1 {
				// The first delivery of each id: a redelivery goes back
				// to its place, so only first deliveries are ordered.
				w.deqs = append(w.deqs, porcupine.Operation{
					ClientId: 1, Input: qInput{id: env.ID}, Call: lastAck, Return: got,
				})
			}
		}
		w.mu.Unlock()
		lastAck = w.now()
		if w.ordered {
			if err := d.Ack(w.ctx); err != nil && w.ctx.Err() == nil {
				w.ackErrs.Add(1)
			}
			continue
		}
		w.consWG.Add(1)
		go func() {
			defer w.consWG.Done()
			if err := d.Ack(w.ctx); err != nil && w.ctx.Err() == nil {
				w.ackErrs.Add(1)
			}
		}()
	}
}

// newestIDs returns up to n ids, the most recently first attempted first.
func (w *workload) newestIDs(n int) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	ids := make([]string, 0, len(w.ops))
	for id := range w.ops {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return w.ops[ids[i]].call > w.ops[ids[j]].call })
	return ids[:min(n, len(ids))]
}

// waitAcked waits until at least n enqueues have been acknowledged.
func (w *workload) waitAcked(n int64, timeout time.Duration) {
	w.t.Helper()
	waitFor(w.t, timeout, fmt.Sprintf("%d acknowledged enqueues", n), func() error {
		if got := w.acked.Load(); got < n {
			return fmt.Errorf("%d acknowledged", got)
		}
		return nil
	})
}

// more waits until n more enqueues are acknowledged than now.
func (w *workload) more(n int64, timeout time.Duration) {
	w.t.Helper()
	w.waitAcked(w.acked.Load()+n, timeout)
}

// fault logs a fault being injected and returns its time.
func (w *workload) fault(format string, args ...any) time.Time {
	w.t.Helper()
	w.t.Logf("fault: "+format+" (%d acked so far)", append(args, w.acked.Load())...)
	w.mu.Lock()
	w.faults++
	w.mu.Unlock()
	return time.Now()
}

// recovered waits until the cluster acknowledges n more enqueues and
// records the time since the fault as a recovery time.
func (w *workload) recovered(since time.Time, n int64, timeout time.Duration) {
	w.t.Helper()
	w.more(n, timeout)
	d := time.Since(since)
	w.mu.Lock()
	w.maxRecovery = max(w.maxRecovery, d)
	w.mu.Unlock()
	w.t.Logf("progress again %v after the fault", d.Round(time.Millisecond))
}

// finish stops the producers, resolves every id whose last attempt failed
// by retrying it with the same id (the cluster must be healed by now),
// drains the queue, and runs the checker.
// abandon stops the workload without healing or draining and runs the
// checker on what was delivered so far (for a broken build that never
// comes back).
func (w *workload) abandon() result {
	w.t.Helper()
	w.stopOnce.Do(func() { close(w.stop) })
	w.cancel()
	w.prodWG.Wait()
	w.consWG.Wait()
	return w.check()
}

func (w *workload) finish() result {
	w.t.Helper()
	w.stopOnce.Do(func() { close(w.stop) })
	w.prodWG.Wait()

	w.mu.Lock()
	var open []string
	for id, r := range w.ops {
		if r.outcome != outAcked {
			open = append(open, id)
		}
	}
	w.mu.Unlock()
	sort.Strings(open)
	if len(open) > 0 && !w.expectLoss {
		cl := w.c.dial(w.ctx, w.agent, w.c.urls(0)...)
		for _, id := range open {
			if !w.attempt(cl, id, 30*time.Second) {
				w.mu.Lock()
				w.t.Errorf("enqueue of %s still failing after the heal: %s", id, w.ops[id].lastErr)
				w.mu.Unlock()
			}
		}
	}

	if w.consumers == 0 {
		// A producers-only run leaves its backlog to the drain.
		w.startConsumers(2, func(i int) []string { return w.c.urls(1 + i%len(w.c.nodes)) })
	}
	info := w.c.dial(w.ctx, "observer", w.c.urls(0)...)
	drained := func() error {
		w.mu.Lock()
		missing := 0
		for id, r := range w.ops {
			if r.outcome == outAcked && w.deliveries[id] == 0 {
				missing++
			}
		}
		w.mu.Unlock()
		if missing > 0 && !w.expectLoss {
			return fmt.Errorf("%d acknowledged messages not delivered yet", missing)
		}
		ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
		defer cancel()
		for _, q := range []string{w.queue, w.queue + ".dlq"} {
			s, err := info.QueueInfo(ctx, q)
			if err != nil && !client.IsCode(err, "not_found") {
				return err
			}
			if s.Ready != 0 || s.Inflight != 0 || s.Delayed != 0 {
				return fmt.Errorf("queue.info %s %+v", q, s)
			}
		}
		return nil
	}
	if w.expectLoss {
		// A broken build may never drain: take what arrives in a while.
		_ = poll(20*time.Second, drained)
	} else if err := poll(90*time.Second, drained); err != nil {
		// Go on to the checker, which names what is missing.
		w.t.Errorf("not drained after 90s: %v", err)
		ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
		if s, qerr := info.QueueInfo(ctx, w.queue); qerr == nil {
			w.t.Errorf("queue.info %+v; %d consumers restarted", s, w.consumerEnds.Load())
		}
		cancel()
	}
	w.cancel()
	w.consWG.Wait()
	return w.check()
}

// result is what the checker found.
type result struct {
	Scenario      string  `json:"scenario"`
	Nodes         int     `json:"nodes"`
	Attempted     int     `json:"attempted"`
	Acked         int     `json:"acked"`
	Attempts      int     `json:"attempts"`
	Unknown       int     `json:"unknown_outcomes"` // attempts whose outcome was unknown
	Refused       int     `json:"refusals"`         // attempts refused (unavailable, ...)
	Recovered     int     `json:"recovered"`        // ids acknowledged as duplicates: an unknown attempt had stored them
	UnknownIDs    int     `json:"unknown_ids"`      // ids with at least one attempt of unknown outcome
	RecoveredRate float64 `json:"recovered_rate"`   // recovered / unknown_ids
	Delivered     int     `json:"delivered"`        // distinct ids delivered
	Deliveries    int     `json:"deliveries"`
	Duplicates    int     `json:"duplicate_deliveries"`
	Redeliveries  int     `json:"redeliveries"`
	DeadLettered  int     `json:"dead_lettered"` // deliveries from the dead-letter queue
	Lost          int     `json:"lost"`
	Unexpected    int     `json:"unexpected"`
	DuplicateRate float64 `json:"duplicate_rate"`
	Ordered       string  `json:"order_check,omitempty"`
	Faults        int     `json:"faults"`
	RecoveryMs    int64   `json:"max_recovery_ms"` // longest fault-to-progress time
	Seconds       float64 `json:"seconds"`
}

// check is the total-queue check: lost = acknowledged − delivered must be
// empty, unexpected = delivered − attempted must be empty.
func (w *workload) check() result {
	w.t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	r := result{Scenario: w.t.Name(), Nodes: len(w.c.nodes), Attempted: len(w.ops), Seconds: time.Since(w.start).Seconds()}
	var lost []string
	for id, op := range w.ops {
		r.Attempts += op.attempts
		r.Unknown += op.unknowns
		r.Refused += op.refusals
		if op.unknowns > 0 || op.dup {
			// A duplicate ack means an attempt (perhaps one the client
			// library retried by itself) had an unknown outcome.
			r.UnknownIDs++
		}
		if op.outcome == outAcked {
			r.Acked++
			if op.dup {
				r.Recovered++
			}
			if w.deliveries[id] == 0 {
				lost = append(lost, id)
			}
		}
	}
	for id, n := range w.deliveries {
		r.Delivered++
		r.Deliveries += n
		r.Duplicates += n - 1
		if w.ops[id] == nil {
			r.Unexpected++
		}
	}
	r.Unexpected += len(w.foreign)
	r.Redeliveries, r.DeadLettered = w.redelivery, w.dead
	r.Faults, r.RecoveryMs = w.faults, w.maxRecovery.Milliseconds()
	r.Lost = len(lost)
	if r.UnknownIDs > 0 {
		r.RecoveredRate = float64(r.Recovered) / float64(r.UnknownIDs)
	}
	if r.Deliveries > 0 {
		r.DuplicateRate = float64(r.Duplicates) / float64(r.Deliveries)
	}
	sort.Strings(lost)
	if len(lost) > 0 && !w.expectLoss {
		w.t.Errorf("LOST: %d acknowledged messages were never delivered: %s", len(lost), firstN(lost, 20))
	}
	if len(w.foreign) > 0 {
		w.t.Errorf("UNEXPECTED: %d deliveries were never attempted: %s", len(w.foreign), firstN(w.foreign, 20))
	}
	if w.ordered {
		r.Ordered = w.checkOrder()
	}
	return r
}

func firstN(s []string, n int) string {
	if len(s) > n {
		return strings.Join(s[:n], ", ") + ", ..."
	}
	return strings.Join(s, ", ")
}

// qInput is a queue operation for the order check: an enqueue of id, or a
// delivery of id.
type qInput struct {
	enq bool
	id  string
}

// fifoModel is a FIFO queue: deliveries come out in the order enqueues took
// effect.
var fifoModel = porcupine.Model{
	Init: func() any { return []string(nil) },
	Step: func(state, input, _ any) (bool, any) {
		q := state.([]string)
		in := input.(qInput)
		if in.enq {
			return true, append(slices.Clip(q), in.id)
		}
		if len(q) == 0 || q[0] != in.id {
			return false, q
		}
		return true, q[1:]
	},
	Equal: func(a, b any) bool { return slices.Equal(a.([]string), b.([]string)) },
	DescribeOperation: func(input, _ any) string {
		in := input.(qInput)
		if in.enq {
			return "enqueue " + in.id
		}
		return "deliver " + in.id
	},
}

// checkOrder runs porcupine over the single producer's enqueues and the
// single consumer's deliveries. It is called with w.mu held.
func (w *workload) checkOrder() string {
	var hist []porcupine.Operation
	for id, op := range w.ops {
		ret := op.ret
		if op.outcome != outAcked {
			if w.deliveries[id] == 0 {
				continue // never took effect
			}
			ret = math.MaxInt64
		}
		hist = append(hist, porcupine.Operation{ClientId: 0, Input: qInput{enq: true, id: id}, Call: op.call, Return: ret})
	}
	hist = append(hist, w.deqs...)
	res := porcupine.CheckOperationsTimeout(fifoModel, hist, time.Minute)
	switch res {
	case porcupine.Ok:
		return fmt.Sprintf("linearizable FIFO (%d operations, first deliveries)", len(hist))
	case porcupine.Unknown:
		w.t.Errorf("order check timed out on %d operations", len(hist))
		return "timeout"
	default:
		w.t.Errorf("ORDER: the history of %d operations is not a FIFO queue", len(hist))
		return "violated"
	}
}

// report logs the result and, when MCPD_FAULT_REPORT names a file, appends
// it there as a JSON line (make chaos collects them for the docs).
func (r result) report(t *testing.T) {
	t.Helper()
	t.Logf("checker: attempted %d, acked %d, lost %d, unexpected %d; attempts %d (%d unknown, %d refused), recovered %d of %d ids with an unknown outcome; deliveries %d of %d ids, %d duplicates (%.2f%%), %d redeliveries, %d dead-lettered; faults %d, max recovery %dms; order: %s; %.1fs",
		r.Attempted, r.Acked, r.Lost, r.Unexpected, r.Attempts, r.Unknown, r.Refused, r.Recovered, r.UnknownIDs,
		r.Deliveries, r.Delivered, r.Duplicates, 100*r.DuplicateRate, r.Redeliveries, r.DeadLettered, r.Faults, r.RecoveryMs, orNone(r.Ordered), r.Seconds)
	if path := os.Getenv("MCPD_FAULT_REPORT"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Errorf("fault report: %v", err)
			return
		}
		defer f.Close()
		b, _ := json.Marshal(r)
		f.Write(append(b, '\n'))
	}
}

func orNone(s string) string {
	if s == "" {
		return "not checked"
	}
	return s
}

// The order check can fail: a delivery ahead of an earlier enqueue that
// completed before the later one began is not a FIFO history.
func Test_Checker_FIFOModelRejectsReorder(t *testing.T) {
	enq := func(id string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: qInput{enq: true, id: id}, Call: call, Return: ret}
	}
	deq := func(id string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: 1, Input: qInput{id: id}, Call: call, Return: ret}
	}
	good := []porcupine.Operation{enq("a", 0, 1), enq("b", 2, 3), deq("a", 4, 5), deq("b", 6, 7)}
	if res := porcupine.CheckOperationsTimeout(fifoModel, good, time.Second); res != porcupine.Ok {
		t.Fatalf("in-order history: %v", res)
	}
	bad := []porcupine.Operation{enq("a", 0, 1), enq("b", 2, 3), deq("b", 4, 5), deq("a", 6, 7)}
	if res := porcupine.CheckOperationsTimeout(fifoModel, bad, time.Second); res != porcupine.Illegal {
		t.Fatalf("reordered history: got %v, want Illegal", res)
	}
	// Overlapping enqueues may take effect in either order.
	overlap := []porcupine.Operation{enq("a", 0, 5), enq("b", 1, 4), deq("b", 6, 7), deq("a", 8, 9)}
	if res := porcupine.CheckOperationsTimeout(fifoModel, overlap, time.Second); res != porcupine.Ok {
		t.Fatalf("overlapping enqueues: %v", res)
	}
}
