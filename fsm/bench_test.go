package fsm_test

import (
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
)

// BenchmarkApply measures the apply loop per command: entries of 64
// enqueues (group commit) with envelopes of 256 bytes and 16 KiB, applied
// in batches of 16 entries as raft hands them over, commits included.
func BenchmarkApply(b *testing.B) {
	for _, size := range []int{256, 16 << 10} {
		b.Run(fmt.Sprintf("enqueue/env=%d", size), func(b *testing.B) {
			const perEntry, perBatch = 64, 16
			f := mustFresh(b, "n1")
			env := make([]byte, size)
			hash := sha256.Sum256(env)
			var (
				index uint64
				batch []*raft.Log
				cmds  []fsm.Command
			)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			b.StopTimer()
			for i := range b.N {
				// Building the entries is not part of the measure.
				cmds = append(cmds, mustCmd(b, fsm.TypeEnqueue, "n1/1/1", uint64(i+1), &queue.EnqueueArgs{
					Queue: fmt.Sprintf("q%d", i%8), From: "bench", ID: fmt.Sprintf("m%d", i), Env: env, Hash: hash,
				}))
				if len(cmds) == perEntry || i == b.N-1 {
					index++
					batch = append(batch, mustLog(b, index, 1_700_000_000_000+int64(index), cmds...))
					cmds = nil
				}
				if len(batch) == perBatch || (i == b.N-1 && len(batch) > 0) {
					b.StartTimer()
					f.ApplyBatch(batch)
					b.StopTimer()
					batch = nil
				}
			}
			b.StartTimer()
			f.Flush()
		})
	}
}

// BenchmarkSettle measures the consume path per settle: entries of 64
// acks or nacks of the deliveries a consumer (prefetch 64) holds, each
// followed by the dispatch that leases the next message, so one op is a
// settle plus a delivery (two rewrites of the message record). With nack
// the same 64 messages come round again and again (no backoff), each
// acked at its 500th attempt for a fresh one, so that records carry the
// longest history they can.
func BenchmarkSettle(b *testing.B) {
	for _, kind := range []string{"ack", "nack"} {
		b.Run(kind, func(b *testing.B) {
			const perEntry, conn = 64, "n1/1/1"
			f := mustFresh(b, "n1")
			var col collector
			f.SetSink(col.sink)
			env := make([]byte, 256)
			var index uint64
			at := int64(1_700_000_000_000)
			apply := func(cmds ...fsm.Command) {
				index++
				at++
				f.ApplyBatch([]*raft.Log{mustLog(b, index, at, cmds...)})
			}
			maxAttempts := queue.MaxMaxAttempts
			apply(mustCmd(b, fsm.TypeDeclare, conn, 0, &queue.DeclareArgs{Queue: "jobs", MaxAttempts: &maxAttempts, SetBackoff: true}))
			const nackUntil = 500
			msgs := perEntry
			if kind == "ack" {
				msgs += b.N
			} else {
				msgs += b.N / nackUntil
			}
			var cmds []fsm.Command
			for i := range msgs {
				e := append([]byte(fmt.Sprint(i)), env...)
				cmds = append(cmds, mustCmd(b, fsm.TypeEnqueue, conn, 0, &queue.EnqueueArgs{
					Queue: "jobs", From: "bench", ID: fmt.Sprintf("m%d", i), Env: e, Hash: sha256.Sum256(e),
				}))
				if len(cmds) == perEntry || i == msgs-1 {
					apply(cmds...)
					cmds = nil
				}
			}
			apply(mustCmd(b, fsm.TypeConsume, conn, 0, &queue.ConsumeArgs{Queue: "jobs", Conn: conn, Prefetch: perEntry, LeaseMs: 3_600_000}))
			f.Flush()
			mt, zero := fsm.TypeAck, int64(0)
			if kind == "nack" {
				mt = fsm.TypeNack
			}
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; {
				b.StopTimer()
				cmds = cmds[:0]
				for _, e := range col.take() {
					d, ok := e.(*queue.Delivery)
					if !ok || done+len(cmds) == b.N {
						continue
					}
					a := &queue.SettleArgs{Queue: d.Queue, Seq: d.Seq, Attempt: d.Attempt, Conn: d.Conn}
					t := mt
					if mt == fsm.TypeNack && d.Attempt < nackUntil {
						a.DelayMs = &zero
					} else {
						t = fsm.TypeAck
					}
					cmds = append(cmds, mustCmd(b, t, conn, 0, a))
				}
				if len(cmds) == 0 {
					b.Fatalf("no deliveries after %d settles", done)
				}
				done += len(cmds)
				b.StartTimer()
				apply(cmds...)
			}
			f.Flush()
		})
	}
}
