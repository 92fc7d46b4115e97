package transport_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// WATCH across nodes: go-redis clients on the three nodes increment one
// counter with the optimistic-locking pattern (WATCH, GET, MULTI, SET,
// EXEC, retry on a null EXEC). Every increment lands exactly once. And
// one abort for certain: a key watched through one node and written
// through another makes EXEC answer null.
func TestRESPWatchAcrossNodes(t *testing.T) {
	_, leader, followers := startThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	const workers, each = 6, 15
	var addrs []string
	for _, n := range append(followers, leader) {
		addrs = append(addrs, startRESP(t, n))
	}
	var aborted sync.Mutex
	aborts := 0
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		c := redis.NewClient(&redis.Options{Addr: addrs[w%len(addrs)], MaxRetries: -1})
		t.Cleanup(func() { c.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				for {
					err := c.Watch(ctx, func(tx *redis.Tx) error {
						n, err := tx.Get(ctx, "counter").Int()
						if err != nil && err != redis.Nil {
							return err
						}
						_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
							p.Set(ctx, "counter", strconv.Itoa(n+1), 0)
							return nil
						})
						return err
					}, "counter")
					if errors.Is(err, redis.TxFailedErr) {
						aborted.Lock()
						aborts++
						aborted.Unlock()
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					break
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: addrs[2]})
	defer c.Close()
	a := dialRESP(t, addrs[0])
	if got := a.do("WATCH", "lock"); got != "+OK" {
		t.Fatal(got)
	}
	if err := c.Set(ctx, "lock", "taken", 0).Err(); err != nil {
		t.Fatal(err)
	}
	a.send([]string{"MULTI"}, []string{"SET", "lock", "mine"}, []string{"EXEC"})
	for _, want := range []string{"+OK", "+QUEUED", "nil"} {
		if got := a.reply(); got != want {
			t.Fatalf("WATCH then a write through another node: %s, want %s", got, want)
		}
	}
	if n, err := c.Get(ctx, "counter").Int(); err != nil || n != workers*each {
		t.Fatalf("counter %d (%v), want %d", n, err, workers*each)
	}
	t.Logf("%d increments, %d aborted transactions retried", workers*each, aborts)
}
