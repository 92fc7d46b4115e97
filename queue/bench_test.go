package queue_test

import (
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// BenchmarkRedeliver measures what a settle costs the queue package
// itself, without commits: one op is a nack (or an ack) of a leased
// message and the dispatch that leases a message again, both rewriting a
// message record. With nack the same 64 messages come round again and
// again, so their records carry the longest history they can; with ack
// each delivery is of a fresh message.
func BenchmarkRedeliver(b *testing.B) {
	for _, kind := range []string{"ack", "nack"} {
		b.Run(kind, func(b *testing.B) {
			const prefetch, conn = 64, "n1/1/1"
			db, err := bolt.Open(filepath.Join(b.TempDir(), "state.db"), 0o600, &bolt.Options{NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			btx, err := db.Begin(true)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = btx.Rollback() }()
			if err := queue.CreateBuckets(btx); err != nil {
				b.Fatal(err)
			}
			now := int64(1_700_000_000_000)
			tx := queue.NewTx(btx, now, "n1")
			must := func(err error) {
				if err != nil {
					b.Fatal(err)
				}
			}
			maxAttempts := 1 << 30 // above the FSM's bound: the queue package does not check it
			_, err = tx.Declare(queue.DeclareArgs{Queue: "jobs", MaxAttempts: &maxAttempts, SetBackoff: true})
			must(err)
			msgs := prefetch
			if kind == "ack" {
				msgs += b.N
			}
			env := make([]byte, 256)
			for i := range msgs {
				_, err := tx.Enqueue(queue.EnqueueArgs{Queue: "jobs", From: "bench", ID: fmt.Sprintf("m%d", i), Env: env, Hash: sha256.Sum256(env)})
				must(err)
			}
			_, err = tx.Consume(queue.ConsumeArgs{Queue: "jobs", Conn: conn, Prefetch: prefetch, LeaseMs: 3_600_000})
			must(err)
			must(tx.Finish())
			held := tx.Effects
			tx.Effects = nil
			zero := int64(0)
			renew := func() { // a transaction as long as the FSM's at most
				must(btx.Commit())
				if btx, err = db.Begin(true); err != nil {
					b.Fatal(err)
				}
				tx = queue.NewTx(btx, now, "n1")
			}
			renew()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if i%1024 == 1023 {
					b.StopTimer()
					renew()
					b.StartTimer()
				}
				tx.SetNow(now + int64(i))
				d := held[i%len(held)].(*queue.Delivery)
				a := queue.SettleArgs{Queue: d.Queue, Seq: d.Seq, Attempt: d.Attempt, Conn: d.Conn}
				if kind == "ack" {
					must(tx.Ack(a))
				} else {
					a.DelayMs = &zero
					must(tx.Nack(a))
				}
				must(tx.Finish())
				if len(tx.Effects) != 1 {
					b.Fatalf("settle %d: %d effects, want one delivery", i, len(tx.Effects))
				}
				held[i%len(held)] = tx.Effects[0]
				tx.Effects = tx.Effects[:0]
			}
		})
	}
}
