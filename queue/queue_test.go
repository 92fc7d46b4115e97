package queue_test

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// Connections used by the tables: node/epoch/seq.
const (
	c1     = "n1/1/1"
	c2     = "n1/1/2"
	remote = "n2/1/1"
)

// op is one call on a queue.Tx. run returns the operation's result (nil
// when it has none) and its error.
type op struct {
	name string
	run  func(tx *queue.Tx) (any, error)
}

// step is one command of a table case: its stamped time, the call, and what
// must come out of it. fx lists the effects Finish produced, formatted by
// fmtEffect; info is checked with ReadInfo after the step; deadline, when
// set, is NextDeadline after the step.
type step struct {
	at       int64
	op       op
	want     any
	err      error
	fx       []string
	info     map[string]queue.Info
	deadline *int64
}

func i64(v int64) *int64 { return &v }
func pint(v int) *int    { return &v }
func pstr(v string) *string {
	return &v
}

func mustDB(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatalf("open bolt: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(queue.CreateBuckets); err != nil {
		t.Fatalf("create buckets: %v", err)
	}
	return db
}

// mustRun applies one operation at time now as the FSM does for a command:
// the call, then Finish. A business error does not roll back.
func mustRun(t *testing.T, db *bolt.DB, now int64, local string, o op) (any, error, []queue.Effect) {
	t.Helper()
	var (
		got any
		err error
		fx  []queue.Effect
	)
	uerr := db.Update(func(btx *bolt.Tx) error {
		tx := queue.NewTx(btx, now, local)
		got, err = o.run(tx)
		if ferr := tx.Finish(); ferr != nil {
			return fmt.Errorf("finish: %w", ferr)
		}
		fx = tx.Effects
		return nil
	})
	if uerr != nil {
		t.Fatalf("at %d %s: %v", now, o.name, uerr)
	}
	return got, err, fx
}

func mustInfo(t *testing.T, db *bolt.DB, name string) queue.Info {
	t.Helper()
	var info queue.Info
	if err := db.View(func(tx *bolt.Tx) error {
		var err error
		info, err = queue.ReadInfo(tx, name)
		return err
	}); err != nil {
		t.Fatalf("info %s: %v", name, err)
	}
	return info
}

func mustDeadline(t *testing.T, db *bolt.DB) int64 {
	t.Helper()
	var next int64
	if err := db.View(func(tx *bolt.Tx) error {
		next = queue.NextDeadline(tx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return next
}

func fmtEffect(e queue.Effect) string {
	switch e := e.(type) {
	case *queue.Delivery:
		s := fmt.Sprintf("D %s c%d %s/%d a%d until=%d %s", e.Conn, e.Consumer, e.Queue, e.Seq, e.Attempt, e.LeaseUntil, e.Msg)
		if e.Dead != nil {
			s += fmt.Sprintf(" dead=%s/%d/%s/%d", e.Dead.Queue, e.Dead.Seq, e.Dead.Reason, e.Dead.Attempts)
		}
		return s
	case *queue.Event:
		return fmt.Sprintf("E %s s%d %s %s", e.Conn, e.Sub, e.Topic, e.Msg)
	default:
		return fmt.Sprintf("? %T %s", e, e.Target())
	}
}

func runSteps(t *testing.T, db *bolt.DB, local string, steps []step) {
	t.Helper()
	for i, s := range steps {
		label := fmt.Sprintf("step %d (at %d %s)", i, s.at, s.op.name)
		got, err, fx := mustRun(t, db, s.at, local, s.op)
		if s.err != nil {
			if !errors.Is(err, s.err) {
				t.Errorf("%s: err = %v, want %v", label, err, s.err)
			}
		} else if err != nil {
			t.Errorf("%s: unexpected err %v", label, err)
		}
		if s.want != nil && !reflect.DeepEqual(got, s.want) {
			t.Errorf("%s: result = %#v, want %#v", label, got, s.want)
		}
		var gotFx []string
		for _, e := range fx {
			gotFx = append(gotFx, fmtEffect(e))
		}
		if strings.Join(gotFx, "\n") != strings.Join(s.fx, "\n") {
			t.Errorf("%s: effects\n got: %q\nwant: %q", label, gotFx, s.fx)
		}
		for name, want := range s.info {
			if got := mustInfo(t, db, name); got != want {
				t.Errorf("%s: info(%s) = %+v, want %+v", label, name, got, want)
			}
		}
		if s.deadline != nil {
			if got := mustDeadline(t, db); got != *s.deadline {
				t.Errorf("%s: NextDeadline = %d, want %d", label, got, *s.deadline)
			}
		}
	}
}

// Operation constructors. Envelopes are the message id itself (the queue
// treats them as opaque bytes), hashed like the real canonical form.

func hashOf(b []byte) [32]byte { return sha256.Sum256(b) }

func enqArgs(q, id string) queue.EnqueueArgs {
	return queue.EnqueueArgs{Queue: q, From: "alice", ID: id, Env: []byte(id), Hash: hashOf([]byte(id))}
}

func enqA(a queue.EnqueueArgs) op {
	return op{fmt.Sprintf("enqueue %s %s p%d d%d", a.Queue, a.ID, a.Priority, a.DelayMs), func(tx *queue.Tx) (any, error) {
		return tx.Enqueue(a)
	}}
}

func enq(q, id string) op { return enqA(enqArgs(q, id)) }

func enqPri(q, id string, pri uint8) op {
	a := enqArgs(q, id)
	a.Priority = pri
	return enqA(a)
}

func enqDelay(q, id string, delay int64) op {
	a := enqArgs(q, id)
	a.DelayMs = delay
	return enqA(a)
}

// enqBody enqueues id with other content than enq(q, id).
func enqBody(q, id, body string) op {
	a := enqArgs(q, id)
	a.Env = []byte(body)
	a.Hash = hashOf(a.Env)
	return enqA(a)
}

func res(seq uint64, dup bool) queue.EnqueueResult { return queue.EnqueueResult{Seq: seq, Dup: dup} }

func consume(q, conn string, prefetch int, leaseMs int64) op {
	return op{fmt.Sprintf("consume %s %s", q, conn), func(tx *queue.Tx) (any, error) {
		return tx.Consume(queue.ConsumeArgs{Queue: q, Conn: conn, Prefetch: prefetch, LeaseMs: leaseMs})
	}}
}

func settle(name string, fn func(*queue.Tx, queue.SettleArgs) error, a queue.SettleArgs) op {
	return op{fmt.Sprintf("%s %s/%d a%d %s", name, a.Queue, a.Seq, a.Attempt, a.Conn), func(tx *queue.Tx) (any, error) {
		return nil, fn(tx, a)
	}}
}

func ack(q string, seq uint64, attempt int, conn string) op {
	return settle("ack", (*queue.Tx).Ack, queue.SettleArgs{Queue: q, Seq: seq, Attempt: attempt, Conn: conn})
}

func nack(q string, seq uint64, attempt int, conn string) op {
	return settle("nack", (*queue.Tx).Nack, queue.SettleArgs{Queue: q, Seq: seq, Attempt: attempt, Conn: conn})
}

func nackDelay(q string, seq uint64, attempt int, conn string, delay int64) op {
	return settle("nack-delay", (*queue.Tx).Nack, queue.SettleArgs{Queue: q, Seq: seq, Attempt: attempt, Conn: conn, DelayMs: &delay})
}

func nackReason(q string, seq uint64, attempt int, conn, reason string) op {
	return settle("nack-reason", (*queue.Tx).Nack, queue.SettleArgs{Queue: q, Seq: seq, Attempt: attempt, Conn: conn, Reason: reason})
}

func reject(q string, seq uint64, attempt int, conn, reason string) op {
	return settle("reject", (*queue.Tx).Reject, queue.SettleArgs{Queue: q, Seq: seq, Attempt: attempt, Conn: conn, Reason: reason})
}

func extend(q string, seq uint64, attempt int, conn string, leaseMs int64) op {
	a := queue.SettleArgs{Queue: q, Seq: seq, Attempt: attempt, Conn: conn, LeaseMs: leaseMs}
	return op{fmt.Sprintf("extend %s/%d a%d %s %d", q, seq, attempt, conn, leaseMs), func(tx *queue.Tx) (any, error) {
		return tx.Extend(a)
	}}
}

func cancel(id uint64, conn string) op {
	return op{fmt.Sprintf("cancel c%d %s", id, conn), func(tx *queue.Tx) (any, error) {
		return nil, tx.Cancel(queue.CancelArgs{Consumer: id, Conn: conn})
	}}
}

func closed(conn string) op {
	return op{"closed " + conn, func(tx *queue.Tx) (any, error) { return nil, tx.ConnClosed(conn) }}
}

func nodeStarted(node string, epoch uint64) op {
	return op{fmt.Sprintf("node-started %s %d", node, epoch), func(tx *queue.Tx) (any, error) {
		return nil, tx.NodeStarted(node, epoch)
	}}
}

func expire() op {
	return op{"expire", func(tx *queue.Tx) (any, error) { return nil, tx.Expire() }}
}

func declare(a queue.DeclareArgs) op {
	return op{"declare " + a.Queue, func(tx *queue.Tx) (any, error) { return tx.Declare(a) }}
}

func publish(topic, id string) op { return publishBody(topic, id, id) }

func publishBody(topic, id, body string) op {
	return op{fmt.Sprintf("publish %s %s", topic, id), func(tx *queue.Tx) (any, error) {
		return tx.Publish(queue.PublishArgs{Topic: topic, From: "alice", ID: id, Env: []byte(body), Hash: hashOf([]byte(body))})
	}}
}

func subscribe(pattern, conn string) op {
	return op{fmt.Sprintf("subscribe %s %s", pattern, conn), func(tx *queue.Tx) (any, error) {
		return tx.Subscribe(queue.SubscribeArgs{Pattern: pattern, Conn: conn})
	}}
}

func unsubscribe(id uint64, conn string) op {
	return op{fmt.Sprintf("unsubscribe s%d %s", id, conn), func(tx *queue.Tx) (any, error) {
		return nil, tx.Unsubscribe(id, conn)
	}}
}

func settings(maxAttempts int, backoff []int64, dlq string, maxLen int64) queue.Settings {
	return queue.Settings{MaxAttempts: maxAttempts, BackoffMs: backoff, DLQ: dlq, MaxLen: maxLen}
}

func inf(ready, inflight, delayed, dead, consumers int64) queue.Info {
	return queue.Info{Ready: ready, Inflight: inflight, Delayed: delayed, Dead: dead, Consumers: consumers}
}

func jobs(i queue.Info) map[string]queue.Info { return map[string]queue.Info{"jobs": i} }

func Test_Queue_Semantics(t *testing.T) {
	cases := []struct {
		name    string
		local   string // node applying the commands; default n1
		noLocal bool   // apply with no local node at all
		steps   []step
	}{
		{name: "enqueue_then_consume_delivers_attempt_1", steps: []step{
			{at: 1000, op: enq("jobs", "m1"), want: res(1, false), info: jobs(inf(1, 0, 0, 0, 0))},
			{at: 2000, op: consume("jobs", c1, 1, 30000), want: uint64(1),
				fx:   []string{"D n1/1/1 c1 jobs/1 a1 until=32000 m1"},
				info: jobs(inf(0, 1, 0, 0, 1))},
			{at: 3000, op: ack("jobs", 1, 1, c1), info: jobs(inf(0, 0, 0, 0, 1))},
			{at: 3001, op: ack("jobs", 1, 1, c1), err: queue.ErrNotFound, info: jobs(inf(0, 0, 0, 0, 1))},
		}},
		{name: "consumer_first_then_enqueue", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 5000), want: uint64(1), info: jobs(inf(0, 0, 0, 0, 1))},
			{at: 1500, op: enq("jobs", "m1"), want: res(1, false),
				fx:   []string{"D n1/1/1 c1 jobs/1 a1 until=6500 m1"},
				info: jobs(inf(0, 1, 0, 0, 1))},
			{at: 1600, op: enq("jobs", "m2"), want: res(2, false), info: jobs(inf(1, 1, 0, 0, 1))},
			{at: 1700, op: ack("jobs", 1, 1, c1),
				fx:   []string{"D n1/1/1 c1 jobs/2 a1 until=6700 m2"},
				info: jobs(inf(0, 1, 0, 0, 1))},
		}},
		{name: "seq_is_per_queue", steps: []step{
			{at: 1000, op: enq("jobs", "m1"), want: res(1, false)},
			{at: 1000, op: enq("other", "m2"), want: res(1, false)},
			{at: 1000, op: enq("jobs", "m3"), want: res(2, false), info: map[string]queue.Info{"jobs": inf(2, 0, 0, 0, 0), "other": inf(1, 0, 0, 0, 0)}},
		}},
		{name: "priority_higher_first_then_lower_seq", steps: []step{
			{at: 1000, op: enqPri("jobs", "m1", 0), want: res(1, false)},
			{at: 1000, op: enqPri("jobs", "m2", 5), want: res(2, false)},
			{at: 1000, op: enqPri("jobs", "m3", 5), want: res(3, false)},
			{at: 1000, op: enqPri("jobs", "m4", 9), want: res(4, false)},
			{at: 1000, op: enqPri("jobs", "m5", 0), want: res(5, false), info: jobs(inf(5, 0, 0, 0, 0))},
			{at: 2000, op: consume("jobs", c1, 10, 1000), want: uint64(1), fx: []string{
				"D n1/1/1 c1 jobs/4 a1 until=3000 m4",
				"D n1/1/1 c1 jobs/2 a1 until=3000 m2",
				"D n1/1/1 c1 jobs/3 a1 until=3000 m3",
				"D n1/1/1 c1 jobs/1 a1 until=3000 m1",
				"D n1/1/1 c1 jobs/5 a1 until=3000 m5",
			}, info: jobs(inf(0, 5, 0, 0, 1))},
		}},
		{name: "priority_out_of_range", steps: []step{
			{at: 1000, op: enqPri("jobs", "m1", 10), err: queue.ErrBadRequest, info: jobs(inf(0, 0, 0, 0, 0))},
			{at: 1000, op: enqDelay("jobs", "m2", -1), err: queue.ErrBadRequest},
		}},
		{name: "prefetch_bounds_unacked_deliveries", steps: []step{
			{at: 1000, op: enq("jobs", "m1")},
			{at: 1000, op: enq("jobs", "m2")},
			{at: 1000, op: enq("jobs", "m3")},
			{at: 1000, op: consume("jobs", c1, 2, 10000), fx: []string{
				"D n1/1/1 c1 jobs/1 a1 until=11000 m1",
				"D n1/1/1 c1 jobs/2 a1 until=11000 m2",
			}, info: jobs(inf(1, 2, 0, 0, 1))},
			{at: 2000, op: ack("jobs", 2, 1, c1), fx: []string{"D n1/1/1 c1 jobs/3 a1 until=12000 m3"}, info: jobs(inf(0, 2, 0, 0, 1))},
			{at: 2000, op: enq("jobs", "m4"), want: res(4, false), info: jobs(inf(1, 2, 0, 0, 1))},
		}},
		{name: "consume_bad_args", steps: []step{
			{at: 1000, op: consume("jobs", c1, 0, 1000), err: queue.ErrBadRequest},
			{at: 1000, op: consume("jobs", c1, 1, 0), err: queue.ErrBadRequest, info: jobs(inf(0, 0, 0, 0, 0))},
		}},
		{name: "round_robin_across_two_consumers", steps: []step{
			{at: 1000, op: consume("jobs", c1, 10, 1000), want: uint64(1)},
			{at: 1000, op: consume("jobs", c2, 10, 1000), want: uint64(2)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}},
			{at: 1000, op: enq("jobs", "m2"), fx: []string{"D n1/1/2 c2 jobs/2 a1 until=2000 m2"}},
			{at: 1000, op: enq("jobs", "m3"), fx: []string{"D n1/1/1 c1 jobs/3 a1 until=2000 m3"}},
			{at: 1000, op: enq("jobs", "m4"), fx: []string{"D n1/1/2 c2 jobs/4 a1 until=2000 m4"}, info: jobs(inf(0, 4, 0, 0, 2))},
		}},
		{name: "round_robin_within_one_dispatch", steps: []step{
			{at: 1000, op: enqDelay("jobs", "m1", 100)},
			{at: 1000, op: enqDelay("jobs", "m2", 100)},
			{at: 1000, op: enqDelay("jobs", "m3", 100)},
			{at: 1000, op: enqDelay("jobs", "m4", 100)},
			{at: 1000, op: enqDelay("jobs", "m5", 100), info: jobs(inf(0, 0, 5, 0, 0))},
			{at: 1000, op: consume("jobs", c1, 2, 1000)},
			{at: 1000, op: consume("jobs", c2, 10, 1000)},
			{at: 1100, op: expire(), fx: []string{
				"D n1/1/1 c1 jobs/1 a1 until=2100 m1",
				"D n1/1/2 c2 jobs/2 a1 until=2100 m2",
				"D n1/1/1 c1 jobs/3 a1 until=2100 m3",
				"D n1/1/2 c2 jobs/4 a1 until=2100 m4",
				"D n1/1/2 c2 jobs/5 a1 until=2100 m5", // c1 is at its prefetch
			}, info: jobs(inf(0, 5, 0, 0, 2))},
		}},
		{name: "ack_needs_the_current_lease", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: consume("jobs", c2, 1, 1000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}},
			{at: 1100, op: ack("jobs", 1, 2, c1), err: queue.ErrNotFound},
			{at: 1100, op: ack("jobs", 1, 0, c1), err: queue.ErrNotFound},
			{at: 1100, op: ack("jobs", 1, 1, c2), err: queue.ErrNotFound},
			{at: 1100, op: ack("jobs", 2, 1, c1), err: queue.ErrNotFound},
			{at: 1100, op: ack("other", 1, 1, c1), err: queue.ErrNotFound},
			{at: 1100, op: nack("jobs", 1, 1, c2), err: queue.ErrNotFound},
			{at: 1100, op: reject("jobs", 1, 1, c2, ""), err: queue.ErrNotFound},
			{at: 1100, op: extend("jobs", 1, 1, c2, 5000), err: queue.ErrNotFound, info: jobs(inf(0, 1, 0, 0, 2))},
			{at: 1200, op: ack("jobs", 1, 1, c1), info: jobs(inf(0, 0, 0, 0, 2))},
			{at: 1300, op: nack("jobs", 1, 1, c1), err: queue.ErrNotFound},
		}},
		{name: "late_ack_cannot_ack_redelivery", steps: []step{
			{at: 0, op: declare(queue.DeclareArgs{Queue: "jobs", BackoffMs: []int64{0}})},
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: consume("jobs", c2, 1, 1000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}},
			{at: 2000, op: expire(), fx: []string{"D n1/1/2 c2 jobs/1 a2 until=3000 m1"}},
			{at: 2001, op: ack("jobs", 1, 1, c1), err: queue.ErrNotFound, info: jobs(inf(0, 1, 0, 0, 2))},
			{at: 2002, op: ack("jobs", 1, 2, c2), info: jobs(inf(0, 0, 0, 0, 2))},
		}},
		{name: "nack_with_delay_ready_at_exactly_due", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 30000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=31000 m1"}},
			{at: 2000, op: nackDelay("jobs", 1, 1, c1, 500), info: jobs(inf(0, 0, 1, 0, 1)), deadline: i64(2500)},
			{at: 2499, op: expire(), info: jobs(inf(0, 0, 1, 0, 1))},
			{at: 2500, op: expire(), fx: []string{"D n1/1/1 c1 jobs/1 a2 until=32500 m1"}, info: jobs(inf(0, 1, 0, 0, 1)), deadline: i64(32500)},
		}},
		{name: "nack_with_zero_delay_is_ready_at_once", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 30000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=31000 m1"}},
			{at: 2000, op: nackDelay("jobs", 1, 1, c1, 0), fx: []string{"D n1/1/1 c1 jobs/1 a2 until=32000 m1"}, info: jobs(inf(0, 1, 0, 0, 1))},
		}},
		{name: "nack_backoff_schedule", steps: []step{
			{at: 0, op: declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(10)}),
				want: settings(10, []int64{1000, 5000, 30000}, "jobs.dlq", 0)},
			{at: 0, op: consume("jobs", c1, 1, 100000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=101000 m1"}},
			// failure 1: backoff[0] = 1000
			{at: 1000, op: nack("jobs", 1, 1, c1), info: jobs(inf(0, 0, 1, 0, 1)), deadline: i64(2000)},
			{at: 1999, op: expire()},
			{at: 2000, op: expire(), fx: []string{"D n1/1/1 c1 jobs/1 a2 until=102000 m1"}},
			// failure 2: backoff[1] = 5000
			{at: 2000, op: nack("jobs", 1, 2, c1), deadline: i64(7000)},
			{at: 6999, op: expire()},
			{at: 7000, op: expire(), fx: []string{"D n1/1/1 c1 jobs/1 a3 until=107000 m1"}},
			// failure 3: backoff[2] = 30000
			{at: 7000, op: nack("jobs", 1, 3, c1), deadline: i64(37000)},
			{at: 36999, op: expire()},
			{at: 37000, op: expire(), fx: []string{"D n1/1/1 c1 jobs/1 a4 until=137000 m1"}},
			// failure 4: backoff[min(4,3)-1] = 30000
			{at: 37000, op: nack("jobs", 1, 4, c1), deadline: i64(67000)},
			{at: 66999, op: expire(), info: jobs(inf(0, 0, 1, 0, 1))},
			{at: 67000, op: expire(), fx: []string{"D n1/1/1 c1 jobs/1 a5 until=167000 m1"}, info: jobs(inf(0, 1, 0, 0, 1))},
		}},
		{name: "lease_expiry_is_a_failed_attempt", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}, deadline: i64(2000)},
			{at: 1999, op: expire(), info: jobs(inf(0, 1, 0, 0, 1))},
			{at: 2000, op: expire(), info: jobs(inf(0, 0, 1, 0, 1)), deadline: i64(3000)},
			{at: 3000, op: expire(), fx: []string{"D n1/1/1 c1 jobs/1 a2 until=4000 m1"}, info: jobs(inf(0, 1, 0, 0, 1))},
			{at: 4000, op: expire(), info: jobs(inf(0, 0, 1, 0, 1)), deadline: i64(9000)}, // failure 2: 5000
			{at: 9000, op: expire(), fx: []string{"D n1/1/1 c1 jobs/1 a3 until=10000 m1"}},
		}},
		{name: "max_attempts_by_nack_moves_to_dlq", steps: []step{
			{at: 0, op: declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(2)})},
			{at: 1000, op: consume("jobs", c1, 1, 30000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=31000 m1"}},
			{at: 1000, op: nack("jobs", 1, 1, c1)},
			{at: 2000, op: expire(), fx: []string{"D n1/1/1 c1 jobs/1 a2 until=32000 m1"}},
			{at: 2000, op: nack("jobs", 1, 2, c1), info: map[string]queue.Info{
				"jobs": inf(0, 0, 0, 1, 1), "jobs.dlq": inf(1, 0, 0, 0, 0),
			}},
			{at: 3000, op: consume("jobs.dlq", c2, 1, 1000), want: uint64(2),
				fx:   []string{"D n1/1/2 c2 jobs.dlq/1 a1 until=4000 m1 dead=jobs/1/max_attempts/2"},
				info: map[string]queue.Info{"jobs.dlq": inf(0, 1, 0, 0, 1)}},
			{at: 3000, op: ack("jobs.dlq", 1, 1, c2), info: map[string]queue.Info{"jobs.dlq": inf(0, 0, 0, 0, 1), "jobs": inf(0, 0, 0, 1, 1)}},
		}},
		{name: "max_attempts_by_lease_expiry_moves_to_dlq", steps: []step{
			{at: 0, op: declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(1)})},
			{at: 0, op: consume("jobs.dlq", c2, 1, 1000)},
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: enqPri("jobs", "m1", 7), fx: []string{"D n1/1/1 c2 jobs/1 a1 until=2000 m1"}},
			{at: 2000, op: expire(), fx: []string{"D n1/1/2 c1 jobs.dlq/1 a1 until=3000 m1 dead=jobs/1/max_attempts/1"},
				info: map[string]queue.Info{"jobs": inf(0, 0, 0, 1, 1), "jobs.dlq": inf(0, 1, 0, 0, 1)}},
		}},
		{name: "max_attempts_by_nack_with_delay_still_dead", steps: []step{
			{at: 0, op: declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(1)})},
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}},
			{at: 1500, op: nackDelay("jobs", 1, 1, c1, 60000), info: map[string]queue.Info{"jobs": inf(0, 0, 0, 1, 1), "jobs.dlq": inf(1, 0, 0, 0, 0)}},
		}},
		{name: "max_attempts_by_conn_closed_moves_to_dlq", steps: []step{
			{at: 0, op: declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(1), DLQ: pstr("graveyard")})},
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}},
			{at: 1500, op: closed(c1), info: map[string]queue.Info{"jobs": inf(0, 0, 0, 1, 0), "graveyard": inf(1, 0, 0, 0, 0), "jobs.dlq": inf(0, 0, 0, 0, 0)}},
			{at: 1600, op: consume("graveyard", c2, 1, 1000), fx: []string{"D n1/1/2 c2 graveyard/1 a1 until=2600 m1 dead=jobs/1/max_attempts/1"}},
		}},
		{name: "reject_moves_to_dlq", steps: []step{
			{at: 1000, op: consume("jobs", c1, 2, 1000)},
			{at: 1000, op: consume("jobs.dlq", c2, 5, 1000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}},
			{at: 1000, op: enq("jobs", "m2"), fx: []string{"D n1/1/1 c1 jobs/2 a1 until=2000 m2"}},
			{at: 1100, op: reject("jobs", 1, 1, c1, ""), fx: []string{"D n1/1/2 c2 jobs.dlq/1 a1 until=2100 m1 dead=jobs/1/rejected/1"}},
			{at: 1200, op: reject("jobs", 2, 1, c1, "bad input"), fx: []string{"D n1/1/2 c2 jobs.dlq/2 a1 until=2200 m2 dead=jobs/2/rejected: bad input/1"},
				info: map[string]queue.Info{"jobs": inf(0, 0, 0, 2, 1), "jobs.dlq": inf(0, 2, 0, 0, 1)}},
			{at: 1300, op: reject("jobs", 2, 1, c1, "again"), err: queue.ErrNotFound},
		}},
		{name: "reject_counts_attempts", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}},
			{at: 1000, op: nackDelay("jobs", 1, 1, c1, 0), fx: []string{"D n1/1/1 c1 jobs/1 a2 until=2000 m1"}},
			{at: 1000, op: reject("jobs", 1, 2, c1, "")},
			{at: 1000, op: consume("jobs.dlq", c2, 1, 1000), fx: []string{"D n1/1/2 c2 jobs.dlq/1 a1 until=2000 m1 dead=jobs/1/rejected/2"}},
		}},
		{name: "extend_never_moves_lease_earlier", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 10000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=11000 m1"}},
			{at: 2000, op: extend("jobs", 1, 1, c1, 5000), want: int64(11000), deadline: i64(11000)},
			{at: 3000, op: extend("jobs", 1, 1, c1, 20000), want: int64(23000), deadline: i64(23000)},
			{at: 3000, op: extend("jobs", 1, 2, c1, 20000), err: queue.ErrNotFound},
			{at: 11000, op: expire(), info: jobs(inf(0, 1, 0, 0, 1))},
			{at: 22999, op: ack("jobs", 1, 1, c1), info: jobs(inf(0, 0, 0, 0, 1))},
			{at: 23000, op: expire(), info: jobs(inf(0, 0, 0, 0, 1))},
		}},
		{name: "extended_lease_expires_at_new_time", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}},
			{at: 1500, op: extend("jobs", 1, 1, c1, 2000), want: int64(3500)},
			{at: 2000, op: expire(), info: jobs(inf(0, 1, 0, 0, 1))},
			{at: 3500, op: expire(), info: jobs(inf(0, 0, 1, 0, 1))},
		}},
		{name: "cancel_stops_new_deliveries_outstanding_can_be_acked", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 10000), want: uint64(1)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=11000 m1"}},
			{at: 1100, op: cancel(1, c2), err: queue.ErrNotFound},
			{at: 1100, op: cancel(1, c1), info: jobs(inf(0, 1, 0, 0, 0))},
			{at: 1200, op: enq("jobs", "m2"), info: jobs(inf(1, 1, 0, 0, 0))},
			{at: 1300, op: ack("jobs", 1, 1, c1), info: jobs(inf(1, 0, 0, 0, 0))},
			{at: 1400, op: cancel(1, c1), err: queue.ErrNotFound},
			{at: 1500, op: consume("jobs", c2, 1, 1000), want: uint64(2), fx: []string{"D n1/1/2 c2 jobs/2 a1 until=2500 m2"}},
		}},
		{name: "cancelled_consumer_outstanding_lease_still_expires", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}},
			{at: 1100, op: cancel(1, c1)},
			{at: 2000, op: expire(), info: jobs(inf(0, 0, 1, 0, 0))},
		}},
		{name: "conn_closed_releases_leases_and_removes_consumers_and_subs", steps: []step{
			{at: 1000, op: consume("jobs", c1, 5, 30000), want: uint64(1)},
			{at: 1000, op: subscribe("a.b", c1), want: uint64(1)},
			{at: 1000, op: subscribe("a.b", c2), want: uint64(2)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=31000 m1"}},
			{at: 1000, op: enq("jobs", "m2"), fx: []string{"D n1/1/1 c1 jobs/2 a1 until=31000 m2"}},
			{at: 2000, op: closed(c1), info: jobs(inf(2, 0, 0, 0, 0))},
			{at: 2000, op: publish("a.b", "p1"), want: queue.PublishResult{Receivers: 1}, fx: []string{"E n1/1/2 s2 a.b p1"}},
			{at: 2000, op: ack("jobs", 1, 1, c1), err: queue.ErrNotFound},
			{at: 2000, op: cancel(1, c1), err: queue.ErrNotFound},
			{at: 2000, op: unsubscribe(1, c1), err: queue.ErrNotFound},
			// Released at once, and the attempt counted.
			{at: 2000, op: consume("jobs", c2, 5, 1000), fx: []string{
				"D n1/1/2 c2 jobs/1 a2 until=3000 m1",
				"D n1/1/2 c2 jobs/2 a2 until=3000 m2",
			}, info: jobs(inf(0, 2, 0, 0, 1))},
			{at: 2100, op: closed(c1), info: jobs(inf(0, 2, 0, 0, 1))},
		}},
		{name: "conn_closed_redelivers_to_other_consumer_in_same_command", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 30000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=31000 m1"}},
			{at: 1000, op: consume("jobs", c2, 1, 30000)},
			{at: 2000, op: closed(c1), fx: []string{"D n1/1/2 c2 jobs/1 a2 until=32000 m1"}, info: jobs(inf(0, 1, 0, 0, 1))},
		}},
		{name: "node_started_ends_old_epoch_connections_only", steps: []step{
			{at: 1000, op: consume("jobs", "n1/1/1", 1, 30000), want: uint64(1)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=31000 m1"}},
			{at: 1000, op: consume("jobs", "n1/2/1", 1, 30000), want: uint64(2)},
			{at: 1000, op: consume("jobs", "n2/1/1", 1, 30000), want: uint64(3)},
			{at: 1000, op: consume("jobs", "n10/1/1", 1, 30000), want: uint64(4)},
			{at: 1000, op: subscribe("t", "n1/1/9"), want: uint64(1)},
			{at: 1000, op: subscribe("t", "n1/2/9"), want: uint64(2)},
			{at: 1000, op: subscribe("t", "n1/20/9"), want: uint64(3)},
			{at: 1000, op: subscribe("t", "n2/1/9"), want: uint64(4)},
			{at: 1000, op: info0("jobs"), info: jobs(inf(0, 1, 0, 0, 4))},
			{at: 2000, op: nodeStarted("n1", 2), fx: []string{"D n1/2/1 c2 jobs/1 a2 until=32000 m1"}, info: jobs(inf(0, 1, 0, 0, 3))},
			{at: 2000, op: publish("t", "p1"), want: queue.PublishResult{Receivers: 2}, fx: []string{"E n1/2/9 s2 t p1"}},
			{at: 2000, op: ack("jobs", 1, 2, "n1/2/1"), info: jobs(inf(0, 0, 0, 0, 3))},
		}},
		{name: "delay_on_enqueue", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: enqDelay("jobs", "m1", 5000), want: res(1, false), info: jobs(inf(0, 0, 1, 0, 1)), deadline: i64(6000)},
			{at: 1000, op: enq("jobs", "m2"), want: res(2, false), fx: []string{"D n1/1/1 c1 jobs/2 a1 until=2000 m2"}},
			{at: 1500, op: ack("jobs", 2, 1, c1), info: jobs(inf(0, 0, 1, 0, 1))},
			{at: 5999, op: expire(), info: jobs(inf(0, 0, 1, 0, 1))},
			{at: 6000, op: expire(), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=7000 m1"}, info: jobs(inf(0, 1, 0, 0, 1))},
		}},
		{name: "max_len_full_counts_ready_delayed_inflight", steps: []step{
			{at: 0, op: declare(queue.DeclareArgs{Queue: "jobs", MaxLen: i64(3)}), want: settings(5, []int64{1000, 5000, 30000}, "jobs.dlq", 3)},
			{at: 1000, op: enq("jobs", "m1"), want: res(1, false)},
			{at: 1000, op: enqDelay("jobs", "m2", 100), want: res(2, false)},
			{at: 1000, op: consume("jobs", c1, 1, 1000), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}},
			{at: 1000, op: enq("jobs", "m3"), want: res(3, false), info: jobs(inf(1, 1, 1, 0, 1))},
			{at: 1000, op: enq("jobs", "m4"), err: queue.ErrFull},
			{at: 1000, op: enq("jobs", "m1"), want: res(1, true)}, // dup before max_len
			{at: 1100, op: ack("jobs", 1, 1, c1), fx: []string{"D n1/1/1 c1 jobs/3 a1 until=2100 m3"}},
			{at: 1100, op: enq("jobs", "m4"), want: res(4, false), info: jobs(inf(1, 1, 1, 0, 1))},
			{at: 1100, op: enq("jobs", "m5"), err: queue.ErrFull},
			{at: 1200, op: declare(queue.DeclareArgs{Queue: "jobs", MaxLen: i64(0)}), want: settings(5, []int64{1000, 5000, 30000}, "jobs.dlq", 0)},
			{at: 1200, op: enq("jobs", "m5"), want: res(5, false)},
		}},
		{name: "dedup_dup_conflict_and_window", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: enq("jobs", "m1"), want: res(1, false), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}, deadline: i64(2000)},
			{at: 1000, op: enq("jobs", "m1"), want: res(1, true), info: jobs(inf(0, 1, 0, 0, 1))},
			{at: 1500, op: ack("jobs", 1, 1, c1), deadline: i64(126000)},
			{at: 1600, op: enq("jobs", "m1"), want: res(1, true), info: jobs(inf(0, 0, 0, 0, 1))},
			{at: 1600, op: enqBody("jobs", "m1", "other content"), err: queue.ErrConflict},
			{at: 1600, op: enq("other", "m1"), err: queue.ErrConflict},
			{at: 1600, op: publish("jobs", "m1"), err: queue.ErrConflict},
			{at: 120999, op: enq("jobs", "m1"), want: res(1, true)},
			{at: 121000, op: enq("jobs", "m1"), want: res(2, false), fx: []string{"D n1/1/1 c1 jobs/2 a1 until=122000 m1"}},
			{at: 121000, op: enq("jobs", "m1"), want: res(2, true)},
			{at: 121001, op: enqBody("jobs", "m1", "other content"), err: queue.ErrConflict},
		}},
		{name: "dedup_key_is_from_and_id", steps: []step{
			{at: 1000, op: enq("jobs", "m1"), want: res(1, false)},
			{at: 1000, op: enqA(queue.EnqueueArgs{Queue: "jobs", From: "bob", ID: "m1", Env: []byte("m1"), Hash: hashOf([]byte("m1"))}), want: res(2, false)},
			{at: 1000, op: enqA(queue.EnqueueArgs{Queue: "other", From: "bob", ID: "m2", Env: []byte("m1"), Hash: hashOf([]byte("m1"))}), want: res(1, false)},
		}},
		{name: "dedup_forgotten_by_expire_after_window", steps: []step{
			{at: 1000, op: enq("jobs", "m1"), want: res(1, false), deadline: i64(126000)},
			{at: 60000, op: enq("jobs", "m2"), want: res(2, false), deadline: i64(126000)},
			{at: 120999, op: expire(), deadline: i64(126000)},
			{at: 121000, op: expire(), deadline: i64(185000)},
			{at: 121000, op: enq("other", "m1"), want: res(1, false), deadline: i64(185000)},
			{at: 121000, op: enq("jobs", "m2"), want: res(2, true)},
			{at: 180000, op: expire(), deadline: i64(246000)},
			{at: 241000, op: expire(), deadline: i64(0), info: map[string]queue.Info{"jobs": inf(2, 0, 0, 0, 0), "other": inf(1, 0, 0, 0, 0)}},
		}},
		{name: "declare_idempotent_and_partial", steps: []step{
			{at: 1000, op: info0("jobs"), info: jobs(inf(0, 0, 0, 0, 0))},
			{at: 1000, op: declare(queue.DeclareArgs{Queue: "jobs"}), want: settings(5, []int64{1000, 5000, 30000}, "jobs.dlq", 0)},
			{at: 1000, op: declare(queue.DeclareArgs{Queue: "jobs"}), want: settings(5, []int64{1000, 5000, 30000}, "jobs.dlq", 0)},
			{at: 1000, op: declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(3)}), want: settings(3, []int64{1000, 5000, 30000}, "jobs.dlq", 0)},
			{at: 1000, op: declare(queue.DeclareArgs{Queue: "jobs", BackoffMs: []int64{10, 20}}), want: settings(3, []int64{10, 20}, "jobs.dlq", 0)},
			{at: 1000, op: declare(queue.DeclareArgs{Queue: "jobs", DLQ: pstr("dead")}), want: settings(3, []int64{10, 20}, "dead", 0)},
			{at: 1000, op: declare(queue.DeclareArgs{Queue: "jobs", MaxLen: i64(7)}), want: settings(3, []int64{10, 20}, "dead", 7)},
			{at: 1000, op: declare(queue.DeclareArgs{Queue: "jobs", MaxLen: i64(7)}), want: settings(3, []int64{10, 20}, "dead", 7)},
			{at: 1000, op: declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(0)}), err: queue.ErrBadRequest},
			{at: 1000, op: declare(queue.DeclareArgs{Queue: "jobs", DLQ: pstr("jobs")}), err: queue.ErrBadRequest},
			{at: 1000, op: declare(queue.DeclareArgs{Queue: "jobs", MaxLen: i64(-1)}), err: queue.ErrBadRequest},
			{at: 1000, op: declare(queue.DeclareArgs{Queue: "jobs"}), want: settings(3, []int64{10, 20}, "dead", 7), info: jobs(inf(0, 0, 0, 0, 0))},
		}},
		{name: "declared_backoff_and_dlq_are_used", steps: []step{
			{at: 0, op: declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(2), BackoffMs: []int64{250}, DLQ: pstr("dead")})},
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}},
			{at: 1000, op: nack("jobs", 1, 1, c1), deadline: i64(1250)},
			{at: 1250, op: expire(), fx: []string{"D n1/1/1 c1 jobs/1 a2 until=2250 m1"}},
			{at: 1300, op: nack("jobs", 1, 2, c1), info: map[string]queue.Info{"jobs": inf(0, 0, 0, 1, 1), "dead": inf(1, 0, 0, 0, 0), "jobs.dlq": {}}},
		}},
		{name: "effects_only_for_local_node", local: "n2", steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: consume("jobs", remote, 1, 1000)},
			{at: 1000, op: enq("jobs", "m1")},
			{at: 1000, op: enq("jobs", "m2"), fx: []string{"D n2/1/1 c2 jobs/2 a1 until=2000 m2"}, info: jobs(inf(0, 2, 0, 0, 2))},
		}},
		{name: "no_local_node_no_effects", noLocal: true, steps: []step{
			{at: 1000, op: consume("jobs", c1, 1, 1000)},
			{at: 1000, op: subscribe(">", c1)},
			{at: 1000, op: enq("jobs", "m1"), info: jobs(inf(0, 1, 0, 0, 1))},
			{at: 1000, op: publish("x", "p1"), want: queue.PublishResult{Receivers: 1}},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			local := tc.local
			if local == "" && !tc.noLocal {
				local = "n1"
			}
			runSteps(t, mustDB(t), local, tc.steps)
		})
	}
}

// info0 does nothing; a step with it only checks counters.
func info0(name string) op {
	return op{"info " + name, func(tx *queue.Tx) (any, error) { return nil, nil }}
}

func Test_Queue_ReadInfo_UnknownQueueIsZeroAndCreatesNothing(t *testing.T) {
	db := mustDB(t)
	if got := mustInfo(t, db, "nope"); got != (queue.Info{}) {
		t.Fatalf("info = %+v", got)
	}
	if err := db.View(func(tx *bolt.Tx) error {
		if _, ok, err := queue.ReadSettings(tx, "nope"); err != nil || ok {
			return fmt.Errorf("ReadSettings ok=%v err=%v, want false", ok, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// consume creates the queue with defaults.
	mustRun(t, db, 1, "n1", consume("jobs", c1, 1, 1000))
	if err := db.View(func(tx *bolt.Tx) error {
		s, ok, err := queue.ReadSettings(tx, "jobs")
		if err != nil || !ok {
			return fmt.Errorf("ReadSettings ok=%v err=%v", ok, err)
		}
		if want := settings(5, []int64{1000, 5000, 30000}, "jobs.dlq", 0); !reflect.DeepEqual(s, want) {
			return fmt.Errorf("settings = %+v, want %+v", s, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A message that dies a second time (in its dead-letter queue) keeps the
// origin of its first death: deadLetter's own doc says so, and PROTOCOL.md
// says the dead info names "the original queue and seq".
func Test_Queue_DeadLetterOfDeadLetter_KeepsOrigin(t *testing.T) {
	db := mustDB(t)
	runSteps(t, db, "n1", []step{
		{at: 0, op: declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(1)})},
		{at: 0, op: declare(queue.DeclareArgs{Queue: "jobs.dlq", MaxAttempts: pint(1)})},
		{at: 1000, op: consume("jobs", c1, 1, 1000)},
		{at: 1000, op: enq("jobs", "m1"), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=2000 m1"}},
		{at: 1000, op: reject("jobs", 1, 1, c1, "")},
		{at: 1000, op: consume("jobs.dlq", c2, 1, 1000), fx: []string{"D n1/1/2 c2 jobs.dlq/1 a1 until=2000 m1 dead=jobs/1/rejected/1"}},
		{at: 2000, op: expire(), info: map[string]queue.Info{"jobs.dlq": inf(0, 0, 0, 1, 1), "jobs.dlq.dlq": inf(1, 0, 0, 0, 0)}},
	})
	_, _, fx := mustRun(t, db, 3000, "n1", consume("jobs.dlq.dlq", c2, 1, 1000))
	if len(fx) != 1 {
		t.Fatalf("effects = %d, want 1 delivery", len(fx))
	}
	d := fx[0].(*queue.Delivery)
	if d.Dead == nil || d.Dead.Queue != "jobs" || d.Dead.Seq != 1 {
		t.Errorf("second death: dead = %+v, want origin jobs/1 kept", d.Dead)
	}
}

func Test_Queue_Publish_Receivers(t *testing.T) {
	runSteps(t, mustDB(t), "n1", []step{
		{at: 1000, op: subscribe("a.*", "n1/1/1"), want: uint64(1)},
		{at: 1000, op: subscribe("a.>", "n1/1/2"), want: uint64(2)},
		{at: 1000, op: subscribe("a.b", "n2/1/1"), want: uint64(3)},
		{at: 1000, op: subscribe("x", "n1/1/1"), want: uint64(4)},
		{at: 1000, op: subscribe(">", "n2/1/2"), want: uint64(5)},
		{at: 1000, op: subscribe("a.b.*", "n1/1/3"), want: uint64(6)},
		{at: 2000, op: publish("a.b", "p1"), want: queue.PublishResult{Receivers: 4}, fx: []string{
			"E n1/1/1 s1 a.b p1",
			"E n1/1/2 s2 a.b p1",
		}},
		{at: 2000, op: publish("a.b", "p1"), want: queue.PublishResult{Receivers: 0, Dup: true}},
		{at: 2000, op: publishBody("a.b", "p1", "changed"), err: queue.ErrConflict},
		{at: 2000, op: publish("a.c", "p1"), err: queue.ErrConflict},
		{at: 2000, op: enq("a.b", "p1"), err: queue.ErrConflict},
		{at: 2000, op: publish("a.b.c", "p2"), want: queue.PublishResult{Receivers: 3}, fx: []string{
			"E n1/1/2 s2 a.b.c p2",
			"E n1/1/3 s6 a.b.c p2",
		}},
		{at: 2000, op: publish("nobody.here", "p3"), want: queue.PublishResult{Receivers: 1}},
		{at: 2000, op: unsubscribe(1, "n1/1/2"), err: queue.ErrNotFound},
		{at: 2000, op: unsubscribe(1, "n1/1/1")},
		{at: 2000, op: unsubscribe(1, "n1/1/1"), err: queue.ErrNotFound},
		{at: 2000, op: unsubscribe(99, "n1/1/1"), err: queue.ErrNotFound},
		{at: 2000, op: publish("a.b", "p4"), want: queue.PublishResult{Receivers: 3}, fx: []string{"E n1/1/2 s2 a.b p4"}},
		{at: 2000, op: subscribe("a.b", "n1/1/1"), want: uint64(7)}, // ids are never reused
		{at: 122000, op: publish("a.b", "p1"), want: queue.PublishResult{Receivers: 4}, fx: []string{
			"E n1/1/2 s2 a.b p1",
			"E n1/1/1 s7 a.b p1",
		}},
	})
}

func Test_Queue_MatchTopic(t *testing.T) {
	cases := []struct {
		pattern, topic string
		want           bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"a", "a.b", false},
		{"a.b", "a", false},
		{"a.b", "a.b", true},
		{"*", "a", true},
		{"*", "a.b", false},
		{"a.*", "a.b", true},
		{"a.*", "a", false},
		{"a.*", "a.b.c", false},
		{"*.b", "a.b", true},
		{"*.b", "a.c", false},
		{"a.*.c", "a.x.c", true},
		{"a.*.c", "a.x.d", false},
		{"*.*", "a.b", true},
		{">", "a", true},
		{">", "a.b.c", true},
		{"a.>", "a", false},
		{"a.>", "a.b", true},
		{"a.>", "a.b.c", true},
		{"a.>", "b.c", false},
		{"*.>", "a.b", true},
		{"*.>", "a", false},
		{"a.b.>", "a.b", false},
		{"ab", "a", false},
		{"a", "ab", false},
	}
	for _, tc := range cases {
		if got := queue.MatchTopic(tc.pattern, tc.topic); got != tc.want {
			t.Errorf("MatchTopic(%q, %q) = %v, want %v", tc.pattern, tc.topic, got, tc.want)
		}
	}
}

func Test_Queue_ValidTopic(t *testing.T) {
	cases := []struct {
		s         string
		wildcards bool
		want      bool
	}{
		{"a", false, true},
		{"a.b.c", false, true},
		{"A-z_0.9", false, true},
		{"", false, false},
		{"", true, false},
		{".", false, false},
		{"a.", false, false},
		{".a", false, false},
		{"a..b", false, false},
		{"a b", false, false},
		{"a/b", false, false},
		{"é", false, false},
		{"*", false, false},
		{">", false, false},
		{"a.*", false, false},
		{"a.>", false, false},
		{"*", true, true},
		{">", true, true},
		{"a.*", true, true},
		{"*.b", true, true},
		{"a.>", true, true},
		{"*.>", true, true},
		{"a.*.c", true, true},
		{"a.>.c", true, false},
		{">.a", true, false},
		{"a.b*", true, false},
		{"a*", true, false},
		{"a.**", true, false},
		{"a.>>", true, false},
		{"a.*>", true, false},
		{"a..>", true, false},
		{strings.Repeat("a", 512), false, true},
		{strings.Repeat("a", 513), false, false},
	}
	for _, tc := range cases {
		if got := queue.ValidTopic(tc.s, tc.wildcards); got != tc.want {
			t.Errorf("ValidTopic(%q, %v) = %v, want %v", tc.s, tc.wildcards, got, tc.want)
		}
	}
}

func Test_Queue_NextDeadline(t *testing.T) {
	db := mustDB(t)
	if got := mustDeadline(t, db); got != 0 {
		t.Fatalf("empty: NextDeadline = %d, want 0", got)
	}
	runSteps(t, db, "n1", []step{
		{at: 1000, op: consume("jobs", c1, 1, 0), err: queue.ErrBadRequest, deadline: i64(0)},
		{at: 1000, op: subscribe("t", c1), deadline: i64(0)},
		{at: 1000, op: publish("t", "p1"), fx: []string{"E n1/1/1 s1 t p1"}, deadline: i64(126000)}, // dedup entry
		{at: 2000, op: enqDelay("jobs", "m1", 500), deadline: i64(2500)},                            // delayed message
		{at: 2000, op: consume("jobs", c1, 1, 60000), deadline: i64(2500)},
		{at: 2500, op: expire(), fx: []string{"D n1/1/1 c1 jobs/1 a1 until=62500 m1"}, deadline: i64(62500)}, // lease
		{at: 2600, op: ack("jobs", 1, 1, c1), deadline: i64(126000)},
		{at: 121000, op: expire(), deadline: i64(127000)},
		{at: 122000, op: expire(), deadline: i64(0)},
	})
}
