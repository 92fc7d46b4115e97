package cluster

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// BenchmarkStoreLogs measures the Raft log store as a node opens it
// (raft.db through the checksum seals, fsync on): one op is one StoreLogs
// call, the unit of durability the Raft leader waits for before it counts
// a batch of entries as stored. entries is how many entries a call carries
// (a dev node under 50 concurrent redis-benchmark clients stores about 3
// entries of about 7 commands each per call), bytes the size of each.
func BenchmarkStoreLogs(b *testing.B) {
	for _, entries := range []int{1, 3, 16, 64} {
		for _, size := range []int{256, 4096} {
			b.Run(fmt.Sprintf("entries=%d/bytes=%d", entries, size), func(b *testing.B) {
				bs, err := raftboltdb.New(raftDBOptions(filepath.Join(b.TempDir(), "raft.db"), false))
				if err != nil {
					b.Fatal(err)
				}
				s, _, err := newChecksumStore(bs, false)
				if err != nil {
					bs.Close()
					b.Fatal(err)
				}
				defer s.Close()
				data := make([]byte, size)
				logs := make([]*raft.Log, entries)
				next := uint64(1)
				b.SetBytes(int64(entries * size))
				b.ResetTimer()
				for range b.N {
					for i := range logs {
						logs[i] = &raft.Log{Index: next, Term: 1, Type: raft.LogCommand, Data: data}
						next++
					}
					if err := s.StoreLogs(logs); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
