package queue_test

import (
	"testing"

	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// Pulled leases: held by a holder that is no connection, they survive a
// node's connections ending, lapse into failed attempts, are
// acknowledged only by a holder of the given prefix with the right
// enqueue time, and a closed consumer connection does not take them.
func Test_Pull_Leases(t *testing.T) {
	db := mustDB(t)
	enq := func(at int64, id string) {
		t.Helper()
		if _, err, _ := mustRun(t, db, at, "n1", op{"enqueue", func(tx *queue.Tx) (any, error) {
			return tx.Enqueue(queue.EnqueueArgs{Queue: "q", From: "a", ID: id, Env: []byte(`{"id":"` + id + `"}`)})
		}}); err != nil {
			t.Fatal(err)
		}
	}
	pull := func(at int64, holder string, n int) []queue.Message {
		t.Helper()
		got, err, _ := mustRun(t, db, at, "n1", op{"pull", func(tx *queue.Tx) (any, error) { return tx.Pull("q", holder, n, 1000) }})
		if err != nil {
			t.Fatal(err)
		}
		return got.([]queue.Message)
	}
	ack := func(at int64, seq uint64, enqueued int64, prefix string) bool {
		t.Helper()
		got, err, _ := mustRun(t, db, at, "n1", op{"ackheld", func(tx *queue.Tx) (any, error) { return tx.AckHeld("q", seq, enqueued, prefix) }})
		if err != nil {
			t.Fatal(err)
		}
		return got.(bool)
	}
	enq(10, "m1")
	enq(20, "m2")
	enq(30, "m3")
	ms := pull(100, "redis:w1", 2)
	if len(ms) != 2 || ms[0].Seq != 1 || ms[1].Seq != 2 || ms[0].Enqueued != 10 || ms[0].Attempts != 1 || ms[0].LeasedAt != 100 || string(ms[0].Env) != `{"id":"m1"}` {
		t.Fatalf("pull: %+v", ms)
	}
	if info := mustInfo(t, db, "q"); info.Ready != 1 || info.Inflight != 2 {
		t.Fatalf("info after pull: %+v", info)
	}
	// Connections of node n1 ending take nothing pulled.
	if _, err, _ := mustRun(t, db, 150, "n1", op{"nodedown", func(tx *queue.Tx) (any, error) { return nil, tx.NodeDown("n1") }}); err != nil {
		t.Fatal(err)
	}
	var held []uint64
	if err := db.View(func(tx *bolt.Tx) error {
		return queue.ReadHeld(tx, "redis:w1", "q", func(m queue.Message) bool { held = append(held, m.Seq); return true })
	}); err != nil || len(held) != 2 {
		t.Fatalf("held by redis:w1: %v %v", held, err)
	}
	if ack(200, 1, 11, "redis:") || ack(200, 1, 10, "ws:") || ack(200, 3, 30, "redis:") {
		t.Fatal("acknowledged with the wrong time, holder or state")
	}
	if !ack(200, 1, 10, "redis:") || ack(200, 1, 10, "redis:") {
		t.Fatal("the holder's ack is taken once")
	}
	// seq 2's lease lapses at 1100: a failed attempt, ready after the
	// default backoff.
	mustRun(t, db, 1100, "n1", op{"expire", func(tx *queue.Tx) (any, error) { return nil, tx.Expire() }})
	if info := mustInfo(t, db, "q"); info.Ready != 1 || info.Delayed != 1 || info.Inflight != 0 {
		t.Fatalf("info after the lease lapsed: %+v", info)
	}
	mustRun(t, db, 1100+queue.DefaultBackoffMs[0], "n1", op{"expire", func(tx *queue.Tx) (any, error) { return nil, tx.Expire() }})
	ms = pull(5000, "redis:w2", 10)
	if len(ms) != 2 || ms[0].Seq != 2 || ms[0].Attempts != 2 || ms[1].Seq != 3 {
		t.Fatalf("pull after the lapse: %+v", ms)
	}
	var all []uint64
	if err := db.View(func(tx *bolt.Tx) error {
		return queue.ReadMessages(tx, "q", true, func(m queue.Message) bool { all = append(all, m.Seq); return true })
	}); err != nil || len(all) != 2 || all[0] != 3 || all[1] != 2 {
		t.Fatalf("messages newest first: %v %v", all, err)
	}
}
