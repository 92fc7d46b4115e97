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
