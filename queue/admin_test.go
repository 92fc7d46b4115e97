package queue_test

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// dbDigest hashes every bucket of the queue package, keys and values in
// order: equal digests, equal queue state.
func dbDigest(t *testing.T, db *bolt.DB) [32]byte {
	t.Helper()
	h := sha256.New()
	if err := db.View(func(tx *bolt.Tx) error {
		for _, name := range queue.Buckets {
			fmt.Fprintf(h, "[%s]", name)
			if err := tx.Bucket(name).ForEach(func(k, v []byte) error {
				fmt.Fprintf(h, "%x=%x;", k, v)
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func redrive(a queue.RedriveArgs) op {
	return op{fmt.Sprintf("redrive %+v", a), func(tx *queue.Tx) (any, error) { return tx.Redrive(a) }}
}

func del(q string, seq uint64, force bool) op {
	return op{fmt.Sprintf("delete %s/%d force=%v", q, seq, force), func(tx *queue.Tx) (any, error) {
		return tx.Delete(queue.DeleteArgs{Queue: q, Seq: seq, Force: force})
	}}
}

// readMsgs returns the stored messages of a queue.
func readMsgs(t *testing.T, db *bolt.DB, name string) []queue.Message {
	t.Helper()
	var out []queue.Message
	if err := db.View(func(tx *bolt.Tx) error {
		return queue.ReadMessages(tx, name, false, func(m queue.Message) bool {
			out = append(out, m)
			return true
		})
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func seqsOf(ms []queue.Message) []uint64 {
	out := []uint64{}
	for _, m := range ms {
		out = append(out, m.Seq)
	}
	return out
}

// mustOK runs an operation that must succeed and returns its result.
func mustOK(t *testing.T, db *bolt.DB, at int64, o op) (any, []queue.Effect) {
	t.Helper()
	got, err, fx := mustRun(t, db, at, "n1", o)
	if err != nil {
		t.Fatalf("%s: %v", o.name, err)
	}
	return got, fx
}

// deadLetters makes jobs (one attempt) and jobs.dlq holding the dead
// letters jobs.dlq/1..4 of jobs/1..4 (jobs.dlq/2, of m2, at priority 5),
// and jobs.dlq/5, a message enqueued there directly: not a dead letter.
func deadLetters(t *testing.T) *bolt.DB {
	t.Helper()
	db := mustDB(t)
	mustOK(t, db, 1000, declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(1)}))
	mustOK(t, db, 1000, enq("jobs", "m1"))
	mustOK(t, db, 1000, enqPri("jobs", "m2", 5))
	mustOK(t, db, 1000, enq("jobs", "m3"))
	mustOK(t, db, 1000, enq("jobs", "m4"))
	mustOK(t, db, 1000, consume("jobs", c1, 10, 60000))
	mustOK(t, db, 1500, closed(c1)) // every lease fails: the last attempt
	mustOK(t, db, 1500, enq("jobs.dlq", "plain"))
	if got := mustInfo(t, db, "jobs"); got != inf(0, 0, 0, 4, 0) {
		t.Fatalf("jobs: %+v", got)
	}
	if got := mustInfo(t, db, "jobs.dlq"); got != inf(5, 0, 0, 0, 0) {
		t.Fatalf("jobs.dlq: %+v", got)
	}
	return db
}

// Redriven dead letters are new ready messages of their origin queue:
// the same envelope and priority, no attempts, no dead-letter info; the
// dead-letter queue no longer holds them, and a consumer gets them as
// first deliveries.
func Test_Queue_Redrive_Seqs_MovesToOrigin(t *testing.T) {
	db := deadLetters(t)
	got, _ := mustOK(t, db, 2000, redrive(queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{4, 2}}))
	want := queue.RedriveResult{Moved: []queue.Moved{{From: 4, Queue: "jobs", Seq: 5}, {From: 2, Queue: "jobs", Seq: 6}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("result %+v, want %+v", got, want)
	}
	// The dead-lettered count is history: it stays.
	if got := mustInfo(t, db, "jobs"); got != inf(2, 0, 0, 4, 0) {
		t.Fatalf("jobs: %+v", got)
	}
	if got := mustInfo(t, db, "jobs.dlq"); got != inf(3, 0, 0, 0, 0) {
		t.Fatalf("jobs.dlq: %+v", got)
	}
	if got := seqsOf(readMsgs(t, db, "jobs.dlq")); !reflect.DeepEqual(got, []uint64{1, 3, 5}) {
		t.Fatalf("jobs.dlq holds %v", got)
	}
	for _, m := range readMsgs(t, db, "jobs") {
		if m.State != queue.StateReady || m.Attempts != 0 || m.Dead != nil || m.Enqueued != 2000 {
			t.Fatalf("redriven message %+v", m)
		}
	}
	// Priority kept: m2 (5) before m4 (0), each a first attempt.
	_, fx := mustOK(t, db, 3000, consume("jobs", c2, 2, 1000))
	var got2 []string
	for _, e := range fx {
		got2 = append(got2, fmtEffect(e))
	}
	if w := []string{"D n1/1/2 c2 jobs/6 a1 until=4000 m2", "D n1/1/2 c2 jobs/5 a1 until=4000 m4"}; !reflect.DeepEqual(got2, w) {
		t.Fatalf("deliveries %q, want %q", got2, w)
	}
}

// Without seqs, the dead letters go in seq order, a limit at a time,
// passing over leased ones and messages that are not dead letters; More
// and Last let the caller continue.
func Test_Queue_Redrive_All_LimitAndCursor(t *testing.T) {
	db := deadLetters(t)
	// jobs.dlq/2 (priority 5) is leased by a consumer of the DLQ.
	_, fx := mustOK(t, db, 2000, consume("jobs.dlq", c2, 1, 60000))
	if len(fx) != 1 || fx[0].(*queue.Delivery).Seq != 2 {
		t.Fatalf("deliveries %v", fx)
	}
	got, _ := mustOK(t, db, 2100, redrive(queue.RedriveArgs{DLQ: "jobs.dlq", Limit: 2}))
	if w := (queue.RedriveResult{Moved: []queue.Moved{{1, "jobs", 5}, {3, "jobs", 6}}, More: true, Last: 3}); !reflect.DeepEqual(got, w) {
		t.Fatalf("first batch %+v, want %+v", got, w)
	}
	got, _ = mustOK(t, db, 2200, redrive(queue.RedriveArgs{DLQ: "jobs.dlq", Limit: 2, After: 3}))
	if w := (queue.RedriveResult{Moved: []queue.Moved{{4, "jobs", 7}}, Last: 5}); !reflect.DeepEqual(got, w) {
		t.Fatalf("second batch %+v, want %+v", got, w)
	}
	// Left: the leased dead letter and the plain message.
	if got := seqsOf(readMsgs(t, db, "jobs.dlq")); !reflect.DeepEqual(got, []uint64{2, 5}) {
		t.Fatalf("jobs.dlq holds %v", got)
	}
	if got := mustInfo(t, db, "jobs.dlq"); got != inf(1, 1, 0, 0, 1) {
		t.Fatalf("jobs.dlq: %+v", got)
	}
	// Nothing left to move: an empty result, not an error.
	got, _ = mustOK(t, db, 2300, redrive(queue.RedriveArgs{DLQ: "jobs.dlq"}))
	if w := (queue.RedriveResult{Moved: []queue.Moved{}, Last: 5}); !reflect.DeepEqual(got, w) {
		t.Fatalf("nothing to move: %+v", got)
	}
}

// Through bounds the seqs a redrive looks at: dead letters that arrive
// after the operator asked do not come round again.
func Test_Queue_Redrive_All_Through(t *testing.T) {
	db := deadLetters(t)
	got, _ := mustOK(t, db, 2000, redrive(queue.RedriveArgs{DLQ: "jobs.dlq", Through: 2, Limit: 2}))
	if w := (queue.RedriveResult{Moved: []queue.Moved{{1, "jobs", 5}, {2, "jobs", 6}}, Last: 2}); !reflect.DeepEqual(got, w) {
		t.Fatalf("%+v, want %+v", got, w)
	}
}

// With a target, every message goes there instead of its origin; the
// target's max_len holds as for an enqueue.
func Test_Queue_Redrive_To(t *testing.T) {
	db := deadLetters(t)
	mustOK(t, db, 1900, declare(queue.DeclareArgs{Queue: "retry", MaxLen: i64(2)}))
	got, _ := mustOK(t, db, 2000, redrive(queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{1, 3}, To: "retry"}))
	if w := (queue.RedriveResult{Moved: []queue.Moved{{1, "retry", 1}, {3, "retry", 2}}}); !reflect.DeepEqual(got, w) {
		t.Fatalf("%+v, want %+v", got, w)
	}
	if got := mustInfo(t, db, "retry"); got != inf(2, 0, 0, 0, 0) {
		t.Fatalf("retry: %+v", got)
	}
	if got := mustInfo(t, db, "jobs"); got != inf(0, 0, 0, 4, 0) {
		t.Fatalf("jobs: %+v", got)
	}
}

// A redrive that cannot do everything it was asked does nothing: it is
// refused before anything is written.
func Test_Queue_Redrive_Refused_ChangesNothing(t *testing.T) {
	db := deadLetters(t)
	mustOK(t, db, 1900, declare(queue.DeclareArgs{Queue: "small", MaxLen: i64(1)}))
	mustOK(t, db, 1900, declare(queue.DeclareArgs{Queue: "full", MaxLen: i64(1)}))
	mustOK(t, db, 1900, enq("full", "f1"))
	mustOK(t, db, 1900, declare(queue.DeclareArgs{Queue: "jobs", MaxLen: i64(1)}))
	mustOK(t, db, 1900, consume("jobs.dlq", c2, 1, 60000)) // leases jobs.dlq/2
	many := make([]uint64, queue.MaxRedrive+1)
	for i := range many {
		many[i] = uint64(i + 1)
	}
	for _, tc := range []struct {
		name string
		a    queue.RedriveArgs
		err  error
	}{
		{"unknown_dlq", queue.RedriveArgs{DLQ: "nope.dlq"}, queue.ErrNotFound},
		{"unknown_seq", queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{1, 99}, To: "small"}, queue.ErrNotFound},
		{"not_a_dead_letter", queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{1, 5}, To: "small"}, queue.ErrBadRequest},
		{"leased", queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{1, 2}, To: "small"}, queue.ErrConflict},
		{"seq_twice", queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{1, 1}, To: "small"}, queue.ErrBadRequest},
		{"too_many_seqs", queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: many}, queue.ErrBadRequest},
		{"limit_too_large", queue.RedriveArgs{DLQ: "jobs.dlq", Limit: queue.MaxRedrive + 1}, queue.ErrBadRequest},
		{"negative_limit", queue.RedriveArgs{DLQ: "jobs.dlq", Limit: -1}, queue.ErrBadRequest},
		{"into_itself", queue.RedriveArgs{DLQ: "jobs.dlq", To: "jobs.dlq"}, queue.ErrBadRequest},
		{"unknown_target", queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{1}, To: "nope"}, queue.ErrNotFound},
		// Room for one of two: neither moves.
		{"target_too_small", queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{1, 3}, To: "small"}, queue.ErrFull},
		{"target_full", queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{1}, To: "full"}, queue.ErrFull},
		{"origin_too_small", queue.RedriveArgs{DLQ: "jobs.dlq"}, queue.ErrFull},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := dbDigest(t, db)
			got, err, fx := mustRun(t, db, 2000, "n1", redrive(tc.a))
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if r := got.(queue.RedriveResult); r.Moved != nil || len(fx) != 0 {
				t.Fatalf("refused redrive answered %+v, effects %v", r, fx)
			}
			if dbDigest(t, db) != before {
				t.Fatal("a refused redrive changed the state")
			}
		})
	}
	// The one that fits goes through.
	if _, err, _ := mustRun(t, db, 2000, "n1", redrive(queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{3}, To: "small"})); err != nil {
		t.Fatal(err)
	}
}

// A delayed dead letter (its DLQ consumer nacked it with a delay) moves
// too, and its timer goes with it.
func Test_Queue_Redrive_Delayed(t *testing.T) {
	db := deadLetters(t)
	_, fx := mustOK(t, db, 2000, consume("jobs.dlq", c2, 1, 60000))
	d := fx[0].(*queue.Delivery)
	mustOK(t, db, 2000, cancel(2, c2)) // no more deliveries to it
	mustOK(t, db, 2000, nackDelay("jobs.dlq", d.Seq, 1, c2, 9000))
	if got := mustInfo(t, db, "jobs.dlq"); got != inf(4, 0, 1, 0, 0) {
		t.Fatalf("jobs.dlq: %+v", got)
	}
	if got := mustDeadline(t, db); got != 11000 {
		t.Fatalf("deadline %d", got)
	}
	mustOK(t, db, 2100, redrive(queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{d.Seq}}))
	if got := mustInfo(t, db, "jobs.dlq"); got != inf(4, 0, 0, 0, 0) {
		t.Fatalf("jobs.dlq: %+v", got)
	}
	// Only the dedup entries' expiry is left (first stored at 1000).
	if got := mustDeadline(t, db); got != 1000+queue.DedupWindowMs+5000 {
		t.Fatalf("deadline %d after the delayed message left", got)
	}
	mustOK(t, db, 20000, expire()) // no timer points at the moved message
}

// Delete removes a message in any state but a leased one, which needs
// Force: its consumer gets the capacity back at once, and the holder's
// ack is answered not found.
func Test_Queue_Delete(t *testing.T) {
	db := mustDB(t)
	mustOK(t, db, 1000, enq("jobs", "m1"))
	mustOK(t, db, 1000, enq("jobs", "m2"))
	mustOK(t, db, 1000, enqDelay("jobs", "m3", 5000))
	mustOK(t, db, 1000, enq("jobs", "m4"))
	_, fx := mustOK(t, db, 1000, consume("jobs", c1, 1, 60000)) // leases jobs/1
	if len(fx) != 1 {
		t.Fatalf("deliveries %v", fx)
	}
	if got := mustInfo(t, db, "jobs"); got != inf(2, 1, 1, 0, 1) {
		t.Fatalf("jobs: %+v", got)
	}

	runSteps(t, db, "n1", []step{
		{at: 2000, op: del("jobs", 2, false), want: queue.DeleteResult{State: queue.StateReady}, info: jobs(inf(1, 1, 1, 0, 1))},
		{at: 2000, op: del("jobs", 3, false), want: queue.DeleteResult{State: queue.StateDelayed}, info: jobs(inf(1, 1, 0, 0, 1)),
			deadline: i64(61000)}, // the lease's end, no longer the delay's
		{at: 2000, op: del("jobs", 3, false), want: queue.DeleteResult{}, err: queue.ErrNotFound},
		{at: 2000, op: del("nope", 1, false), want: queue.DeleteResult{}, err: queue.ErrNotFound},
		{at: 2000, op: del("jobs", 1, false), want: queue.DeleteResult{}, err: queue.ErrConflict, info: jobs(inf(1, 1, 0, 0, 1))},
		// Forced: the consumer's capacity goes to jobs/4 at once.
		{at: 3000, op: del("jobs", 1, true), want: queue.DeleteResult{State: queue.StateInflight, Attempts: 1, Holder: c1},
			fx: []string{"D n1/1/1 c1 jobs/4 a1 until=63000 m4"}, info: jobs(inf(0, 1, 0, 0, 1))},
		{at: 3000, op: ack("jobs", 1, 1, c1), err: queue.ErrNotFound},
		{at: 3000, op: ack("jobs", 4, 1, c1), info: jobs(inf(0, 0, 0, 0, 1)), deadline: i64(1000 + queue.DedupWindowMs + 5000)}, // the dedup entries' expiry
	})
	if got := readMsgs(t, db, "jobs"); len(got) != 0 {
		t.Fatalf("left: %+v", got)
	}
	// A refused delete changes nothing.
	mustOK(t, db, 4000, enq("jobs", "m5"))
	mustOK(t, db, 4000, consume("jobs", c2, 1, 60000))
	before := dbDigest(t, db)
	if _, err, _ := mustRun(t, db, 4000, "n1", del("jobs", 5, false)); !errors.Is(err, queue.ErrConflict) {
		t.Fatalf("delete of a leased message: %v", err)
	}
	if dbDigest(t, db) != before {
		t.Fatal("a refused delete changed the state")
	}
}

// A deleted dead letter reports where it came from.
func Test_Queue_Delete_DeadLetter(t *testing.T) {
	db := deadLetters(t)
	got, _ := mustOK(t, db, 2000, del("jobs.dlq", 2, false))
	r := got.(queue.DeleteResult)
	if r.State != queue.StateReady || r.Dead == nil || r.Dead.Queue != "jobs" || r.Dead.Seq != 2 || r.Dead.Reason != "max_attempts" {
		t.Fatalf("%+v %+v", r, r.Dead)
	}
	if got := mustInfo(t, db, "jobs.dlq"); got != inf(4, 0, 0, 0, 0) {
		t.Fatalf("jobs.dlq: %+v", got)
	}
}
