package cluster_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/queue"
)

// BenchmarkSubmit measures committed enqueues through Node.Submit, without
// the WebSocket edge, on 1 and 3 nodes, from the leader and a follower,
// with 1 and 16 concurrent submitters.
func BenchmarkSubmit(b *testing.B) {
	for _, nodes := range []int{1, 3} {
		for _, conc := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("nodes=%d/conc=%d", nodes, conc), func(b *testing.B) {
				c := testcluster.Start(b, nodes, testcluster.Options{})
				nd := c.WaitLeader()
				if f := c.Followers(); len(f) > 0 {
					nd = f[0]
				}
				var wg sync.WaitGroup
				var mu sync.Mutex
				var firstErr error
				b.ResetTimer()
				per := b.N/conc + 1
				for w := range conc {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range per {
							cmd, _ := fsm.NewCommand(fsm.TypeEnqueue, "", 0, &queue.EnqueueArgs{
								Queue: "bench", From: "b", ID: fmt.Sprintf("%d-%d", w, i), Env: make([]byte, 256),
							})
							if err := nd.Node.Submit(context.Background(), cmd); err != nil {
								mu.Lock()
								firstErr = err
								mu.Unlock()
								return
							}
						}
					}()
				}
				wg.Wait()
				if firstErr != nil {
					b.Fatal(firstErr)
				}
			})
		}
	}
}
