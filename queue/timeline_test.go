package queue_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// ev is a timeline event in the tests' shorthand.
func ev(at int64, kind queue.EventKind, attempt int, who string, consumer uint64, detail string) queue.TimelineEvent {
	return queue.TimelineEvent{At: at, Kind: kind, Attempt: attempt, Who: who, Consumer: consumer, Detail: detail}
}

// msgAt returns message seq of a queue, failing when it is not stored.
func msgAt(t *testing.T, db *bolt.DB, name string, seq uint64) queue.Message {
	t.Helper()
	for _, m := range readMsgs(t, db, name) {
		if m.Seq == seq {
			return m
		}
	}
	t.Fatalf("no message %s/%d", name, seq)
	return queue.Message{}
}

// timeline reads a message's timeline.
func timeline(t *testing.T, m queue.Message) []queue.TimelineEvent {
	t.Helper()
	es, err := m.Timeline()
	if err != nil {
		t.Fatalf("timeline of seq %d: %v", m.Seq, err)
	}
	return es
}

func wantTimeline(t *testing.T, m queue.Message, dropped int, want ...queue.TimelineEvent) {
	t.Helper()
	if got := timeline(t, m); !reflect.DeepEqual(got, want) || m.TimelineDropped != dropped {
		var b strings.Builder
		for _, e := range got {
			fmt.Fprintf(&b, "\n  %+v", e)
		}
		t.Fatalf("timeline of seq %d (%d dropped):%s\nwant (%d dropped) %+v", m.Seq, m.TimelineDropped, b.String(), dropped, want)
	}
}

// redriveAs is a redrive an operator asked for.
func redriveAs(actor string, a queue.RedriveArgs) op {
	return op{fmt.Sprintf("redrive by %s %+v", actor, a), func(tx *queue.Tx) (any, error) {
		tx.SetActor(actor)
		return tx.Redrive(a)
	}}
}

// A message delivered, nacked, delivered again and left to lapse on its
// last attempt dies with its timeline, which the dead letter carries
// with the dead-lettering added; a redrive carries it again, and the
// next delivery follows. Every event has its command's time.
func Test_Timeline_DeliverNackExpireDeadRedrive(t *testing.T) {
	db := mustDB(t)
	mustOK(t, db, 1000, declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(2), BackoffMs: []int64{100}}))
	mustOK(t, db, 1000, enq("jobs", "m1"))
	mustOK(t, db, 1000, consume("jobs", c1, 1, 500)) // consumer 1: attempt 1 until 1500
	mustOK(t, db, 1100, nack("jobs", 1, 1, c1))      // ready again at 1200
	mustOK(t, db, 1200, expire())                    // attempt 2 until 1700
	head := []queue.TimelineEvent{
		ev(1000, queue.EvEnqueued, 0, "alice", 0, ""),
		ev(1000, queue.EvDelivered, 1, c1, 1, ""),
		ev(1100, queue.EvNacked, 1, c1, 0, ""),
		ev(1200, queue.EvDelivered, 2, c1, 1, ""),
	}
	wantTimeline(t, msgAt(t, db, "jobs", 1), 0, head...)

	mustOK(t, db, 1700, expire()) // the lease lapses on the last attempt
	if n := len(readMsgs(t, db, "jobs")); n != 0 {
		t.Fatalf("jobs still holds %d messages", n)
	}
	dead := append(head[:len(head):len(head)],
		ev(1700, queue.EvExpired, 2, c1, 0, ""),
		ev(1700, queue.EvDead, 2, "", 0, "max_attempts"))
	dl := msgAt(t, db, "jobs.dlq", 1)
	if dl.Dead == nil || *dl.Dead != (queue.DeadInfo{Queue: "jobs", Seq: 1, Reason: "max_attempts", Attempts: 2}) {
		t.Fatalf("dead letter info %+v", dl.Dead)
	}
	wantTimeline(t, dl, 0, dead...)

	// Redriven: consumer 1 has room, so the same command delivers it.
	mustOK(t, db, 2000, redriveAs("operator:alice", queue.RedriveArgs{DLQ: "jobs.dlq", Seqs: []uint64{1}}))
	wantTimeline(t, msgAt(t, db, "jobs", 2), 0, append(dead[:len(dead):len(dead)],
		ev(2000, queue.EvRedriven, 0, "operator:alice", 0, "from jobs.dlq/1"),
		ev(2000, queue.EvDelivered, 1, c1, 1, ""))...)
}

// A nack's reason is in its event, clipped to MaxDetailLen bytes; the
// dead-lettering its last attempt causes names it in the dead letter's
// reason and in the event that ends the timeline.
func Test_Timeline_NackReason(t *testing.T) {
	db := mustDB(t)
	mustOK(t, db, 1000, declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(2), BackoffMs: []int64{0}}))
	mustOK(t, db, 1000, enq("jobs", "m1"))
	mustOK(t, db, 1000, consume("jobs", c1, 1, 60000))
	long := strings.Repeat("x", 300)
	mustOK(t, db, 1100, nackReason("jobs", 1, 1, c1, long))
	mustOK(t, db, 1200, nackReason("jobs", 1, 2, c1, "upstream 503"))
	dl := msgAt(t, db, "jobs.dlq", 1)
	if dl.Dead == nil || *dl.Dead != (queue.DeadInfo{Queue: "jobs", Seq: 1, Reason: "max_attempts: upstream 503", Attempts: 2}) {
		t.Fatalf("dead letter info %+v", dl.Dead)
	}
	wantTimeline(t, dl, 0,
		ev(1000, queue.EvEnqueued, 0, "alice", 0, ""),
		ev(1000, queue.EvDelivered, 1, c1, 1, ""),
		ev(1100, queue.EvNacked, 1, c1, 0, long[:queue.MaxDetailLen]),
		ev(1100, queue.EvDelivered, 2, c1, 1, ""),
		ev(1200, queue.EvNacked, 2, c1, 0, "upstream 503"),
		ev(1200, queue.EvDead, 2, "", 0, "max_attempts: upstream 503"))
}

// A reject's reason is in its event, clipped to MaxDetailLen bytes at a
// UTF-8 boundary, and the dead-lettering names it; a closed connection
// or a node that went down releases leases with an event saying so.
func Test_Timeline_RejectAndRelease(t *testing.T) {
	db := mustDB(t)
	mustOK(t, db, 1000, enq("jobs", "m1"))
	mustOK(t, db, 1000, enq("jobs", "m2"))
	mustOK(t, db, 1000, enq("jobs", "m3"))
	mustOK(t, db, 1000, consume("jobs", c1, 2, 60000)) // m1, m2
	reason := strings.Repeat("é", 150)                 // 300 bytes
	mustOK(t, db, 1100, reject("jobs", 1, 1, c1, reason))
	dl := timeline(t, msgAt(t, db, "jobs.dlq", 1))
	if n := len(dl); n != 4 {
		t.Fatalf("dead letter timeline %+v", dl)
	}
	rej, died := dl[2], dl[3]
	clipped := strings.Repeat("é", 100)
	if rej != ev(1100, queue.EvRejected, 1, c1, 0, clipped) {
		t.Fatalf("reject event %+v", rej)
	}
	if died.Kind != queue.EvDead || died.At != 1100 || len(died.Detail) > queue.MaxDetailLen || !utf8.ValidString(died.Detail) ||
		!strings.HasPrefix(died.Detail, "rejected: éé") {
		t.Fatalf("dead event %+v", died)
	}

	// The reject made room: m3 went to c1 too. Both leases end with the
	// connection.
	mustOK(t, db, 1200, closed(c1))
	m2 := msgAt(t, db, "jobs", 2)
	wantTimeline(t, m2, 0,
		ev(1000, queue.EvEnqueued, 0, "alice", 0, ""),
		ev(1000, queue.EvDelivered, 1, c1, 1, ""),
		ev(1200, queue.EvReleased, 1, c1, 0, "connection closed"))
	if m2.State != queue.StateReady {
		t.Fatalf("m2 in state %d", m2.State)
	}
	mustOK(t, db, 1300, consume("jobs", "n2/1/1", 1, 60000)) // consumer 2: m2 again
	mustOK(t, db, 1400, op{"node down", func(tx *queue.Tx) (any, error) { return nil, tx.NodeDown("n2") }})
	got := timeline(t, msgAt(t, db, "jobs", 2))
	if w := []queue.TimelineEvent{ev(1300, queue.EvDelivered, 2, "n2/1/1", 2, ""), ev(1400, queue.EvReleased, 2, "n2/1/1", 0, "node down")}; !reflect.DeepEqual(got[3:], w) {
		t.Fatalf("after node down: %+v", got)
	}
}

// Redis pulls are deliveries to the Redis consumer, with no consumer id;
// a holder name longer than MaxWhoLen is clipped.
func Test_Timeline_Pull(t *testing.T) {
	db := mustDB(t)
	mustOK(t, db, 1000, enq("q", "m1"))
	holder := "redis:" + strings.Repeat("w", 200)
	mustOK(t, db, 1100, op{"pull", func(tx *queue.Tx) (any, error) { return tx.Pull("q", holder, 1, 1000) }})
	wantTimeline(t, msgAt(t, db, "q", 1), 0,
		ev(1000, queue.EvEnqueued, 0, "alice", 0, ""),
		ev(1100, queue.EvDelivered, 1, holder[:queue.MaxWhoLen], 0, ""))
}

// A message retried many times keeps its first event and the latest
// MaxTimeline-1, counting those dropped; its record stays small.
func Test_Timeline_Bound(t *testing.T) {
	db := mustDB(t)
	mustOK(t, db, 1000, declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(1000), SetBackoff: true}))
	mustOK(t, db, 1000, enq("jobs", "m1"))
	mustOK(t, db, 1000, consume("jobs", c1, 1, 60000))
	const nacks = 40
	for i := 1; i <= nacks; i++ { // nacked without backoff: delivered again at once
		mustOK(t, db, 1000+int64(i)*10, nack("jobs", 1, i, c1))
	}
	// 1 enqueue, nacks+1 deliveries, nacks nacks.
	total := 1 + (nacks + 1) + nacks
	m := msgAt(t, db, "jobs", 1)
	if len(timeline(t, m)) != queue.MaxTimeline || m.TimelineDropped != total-queue.MaxTimeline || m.Attempts != nacks+1 {
		t.Fatalf("%d events, %d dropped, %d attempts", len(timeline(t, m)), m.TimelineDropped, m.Attempts)
	}
	want := []queue.TimelineEvent{ev(1000, queue.EvEnqueued, 0, "alice", 0, "")}
	// The latest: deliveries and nacks alternating, ending with delivery nacks+1.
	var tail []queue.TimelineEvent
	for i := nacks; len(tail) < queue.MaxTimeline-1; i-- {
		tail = append(tail, ev(1000+int64(i)*10, queue.EvDelivered, i+1, c1, 1, ""))
		if len(tail) < queue.MaxTimeline-1 {
			tail = append(tail, ev(1000+int64(i)*10, queue.EvNacked, i, c1, 0, ""))
		}
	}
	for i := len(tail) - 1; i >= 0; i-- {
		want = append(want, tail[i])
	}
	wantTimeline(t, m, total-queue.MaxTimeline, want...)

	var size int
	if err := db.View(func(tx *bolt.Tx) error {
		size = len(tx.Bucket([]byte("msgs")).Get(append([]byte("jobs\x00"), 0, 0, 0, 0, 0, 0, 0, 1)))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if size == 0 || size > 300 {
		t.Fatalf("the record of a message with a full timeline is %d bytes", size)
	}
	t.Logf("a record with %d events: %d bytes", queue.MaxTimeline, size)
}

// A nack's reason longer than a reject may give (Apply takes it, as
// older nodes do) is cut to MaxReasonLen in the dead letter it makes.
func Test_Timeline_LongNackReasonIsBounded(t *testing.T) {
	db := mustDB(t)
	mustOK(t, db, 1000, declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: pint(1)}))
	mustOK(t, db, 1000, enq("jobs", "m1"))
	mustOK(t, db, 1000, consume("jobs", c1, 1, 60000))
	mustOK(t, db, 1100, nackReason("jobs", 1, 1, c1, strings.Repeat("x", 5000)))
	dl := msgAt(t, db, "jobs.dlq", 1)
	if dl.Dead == nil || dl.Dead.Reason != "max_attempts: "+strings.Repeat("x", queue.MaxReasonLen) {
		t.Fatalf("dead letter reason of %d bytes", len(dl.Dead.Reason))
	}
}
