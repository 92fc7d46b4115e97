package transport_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
)

// WATCH across nodes: go-redis clients on the three nodes increment one
// counter with the optimistic-locking pattern (WATCH, GET, MULTI, SET,
// EXEC, retry on a null EXEC). Every increment lands exactly once. And
// one abort for certain: a key watched through one node and written
// through another makes EXEC answer null.
//
// A leader can change while an EXEC commits (under load the test
// cluster's 300 ms timeouts let a stalled node lose its lease): the
// node then answers TRYAGAIN, and the outcome may be unknown, so the
// transaction cannot simply be sent again. Each increment therefore
// also writes a key of its own, watched with the counter: an attempt
// that finds its key set is done; one that does not runs only if
// neither key changed since (docs/redis.md, WATCH), so an earlier
// attempt applied later aborts it, or is aborted by it. Exactly once
// either way.
func TestRESPWatchAcrossNodes(t *testing.T) {
	_, leader, followers := startThree(t)
	// A guard against a hang, not a latency bound: 90 increments fighting
	// over one key, through elections on a loaded machine (the race
	// detector, 2 cores), took up to 14 s here.
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitTime)
	defer cancel()
	const workers, each = 6, 15
	var addrs []string
	for _, n := range append(followers, leader) {
		addrs = append(addrs, startRESP(t, n))
	}
	var aborted sync.Mutex
	aborts := 0
	var retried, recovered atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	var marks []string
	for w := range workers {
		c := redis.NewClient(&redis.Options{Addr: addrs[w%len(addrs)], MaxRetries: -1})
		t.Cleanup(func() { c.Close() })
		for i := range each {
			marks = append(marks, fmt.Sprintf("counted:%d:%d", w, i))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				mark := fmt.Sprintf("counted:%d:%d", w, i)
				unknown := false
				for {
					err := c.Watch(ctx, func(tx *redis.Tx) error {
						switch err := tx.Get(ctx, mark).Err(); {
						case err == nil:
							recovered.Add(1) // an attempt answered TRYAGAIN was applied
							return nil
						case err != redis.Nil:
							return err
						}
						n, err := tx.Get(ctx, "counter").Int()
						if err != nil && err != redis.Nil {
							return err
						}
						_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
							p.Set(ctx, "counter", strconv.Itoa(n+1), 0)
							p.Set(ctx, mark, "1", 0)
							return nil
						})
						return err
					}, "counter", mark)
					if errors.Is(err, redis.TxFailedErr) {
						aborted.Lock()
						aborts++
						aborted.Unlock()
						continue
					}
					if tryAgain(err) && ctx.Err() == nil {
						if !unknown {
							retried.Add(1)
						}
						unknown = true
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
	c := redis.NewClient(&redis.Options{Addr: addrs[2], MaxRetries: -1})
	defer c.Close()
	a := dialRESP(t, addrs[0])
	// The abort: a TRYAGAIN for the write or the EXEC leaves it open, and
	// the scenario runs again on a key of its own.
	for attempt := 0; ; attempt++ {
		lock := "lock:" + strconv.Itoa(attempt)
		if got := a.do("WATCH", lock); got != "+OK" {
			t.Fatal(got)
		}
		err := c.Set(ctx, lock, "taken", 0).Err()
		for tryAgain(err) && ctx.Err() == nil {
			err = c.Set(ctx, lock, "taken", 0).Err() // the same value: safe to send again
		}
		if err != nil {
			t.Fatal(err)
		}
		a.send([]string{"MULTI"}, []string{"SET", lock, "mine"}, []string{"EXEC"})
		var got string
		for _, want := range []string{"+OK", "+QUEUED", "nil"} {
			if got = a.reply(); got != want {
				break
			}
		}
		if strings.HasPrefix(got, "-TRYAGAIN ") && ctx.Err() == nil {
			t.Logf("WATCH then a write through another node: %s; again", got)
			continue
		}
		if got != "nil" {
			t.Fatalf("WATCH then a write through another node: %s, want nil", got)
		}
		break
	}
	if n, err := c.Get(ctx, "counter").Int(); err != nil || n != workers*each {
		t.Fatalf("counter %d (%v), want %d", n, err, workers*each)
	}
	if n, err := c.Exists(ctx, marks...).Result(); err != nil || n != workers*each {
		t.Fatalf("%d increments' own keys (%v), want %d", n, err, workers*each)
	}
	t.Logf("%d increments, %d aborted transactions retried, %d answered TRYAGAIN (%d of those had been applied)",
		workers*each, aborts, retried.Load(), recovered.Load())
}

// tryAgain reports whether err is a node's TRYAGAIN: the command found
// no leader in time (nothing changed), or leadership changed while it
// committed (the outcome is unknown).
func tryAgain(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "TRYAGAIN ")
}
