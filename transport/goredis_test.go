package transport_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/redis/go-redis/v9"
)

// go-redis, unmodified, against a three-node cluster: RESP3 (go-redis
// says HELLO 3 first), pipelines, MULTI/EXEC, expiry; a write on one
// node is read on another.
func TestGoRedis(t *testing.T) {
	_, leader, followers := startThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	newClient := func(addr string, proto int) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: addr, Protocol: proto, MaxRetries: -1})
		t.Cleanup(func() { c.Close() })
		return c
	}
	for _, proto := range []int{2, 3} {
		t.Run("RESP"+strconv.Itoa(proto), func(t *testing.T) {
			f := newClient(startRESP(t, followers[0]), proto)
			l := newClient(startRESP(t, leader), proto)
			p := "p" + strconv.Itoa(proto) + ":"
			if err := f.Set(ctx, p+"a", "1", 0).Err(); err != nil {
				t.Fatal(err)
			}
			if v, err := f.Get(ctx, p+"a").Result(); err != nil || v != "1" {
				t.Fatalf("get: %q %v", v, err)
			}
			if _, err := f.Get(ctx, p+"missing").Result(); err != redis.Nil {
				t.Fatalf("get missing: %v, want redis.Nil", err)
			}
			// A pipeline of 100 increments, answered in order.
			cmds, err := f.Pipelined(ctx, func(pp redis.Pipeliner) error {
				for range 100 {
					pp.Incr(ctx, p+"n")
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for i, c := range cmds {
				if n := c.(*redis.IntCmd).Val(); n != int64(i+1) {
					t.Fatalf("pipelined INCR %d: %d", i, n)
				}
			}
			// MULTI/EXEC through go-redis's transaction pipeline.
			var incr *redis.IntCmd
			var get *redis.StringCmd
			if _, err := f.TxPipelined(ctx, func(pp redis.Pipeliner) error {
				pp.Set(ctx, p+"t", "10", 0)
				incr = pp.IncrBy(ctx, p+"t", 5)
				get = pp.Get(ctx, p+"t")
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if incr.Val() != 15 || get.Val() != "15" {
				t.Fatalf("transaction: %d %q", incr.Val(), get.Val())
			}
			if ok, err := f.SetNX(ctx, p+"a", "2", 0).Result(); err != nil || ok {
				t.Fatalf("SETNX on an existing key: %v %v", ok, err)
			}
			if err := f.Expire(ctx, p+"a", time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
			if ttl, err := f.TTL(ctx, p+"a").Result(); err != nil || ttl <= 59*time.Minute || ttl > time.Hour {
				t.Fatalf("TTL %v %v", ttl, err)
			}
			vals, err := f.MGet(ctx, p+"a", p+"missing", p+"t").Result()
			if err != nil || len(vals) != 3 || vals[0] != "1" || vals[1] != nil || vals[2] != "15" {
				t.Fatalf("MGET %v %v", vals, err)
			}
			// The leader applies what the follower wrote.
			testcluster.WaitFor(t, waitTime, func() bool {
				v, err := l.Get(ctx, p+"t").Result()
				return err == nil && v == "15"
			})
			if err := f.Ping(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Stream consumer groups through go-redis across nodes: two consumers of
// one group block on different nodes, an XADD on a third wakes one of
// them, each entry goes to exactly one consumer, and XACK, XPENDING,
// XAUTOCLAIM and XINFO see the same group from any node.
func TestGoRedisStreamGroups(t *testing.T) {
	_, leader, followers := startThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	addrs := []string{startRESP(t, followers[0]), startRESP(t, followers[1]), startRESP(t, leader)}
	client := func(addr string) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 3, MaxRetries: -1})
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b, w := client(addrs[0]), client(addrs[1]), client(addrs[2])
	if err := w.XGroupCreateMkStream(ctx, "jobs", "workers", "$").Err(); err != nil {
		t.Fatal(err)
	}
	if err := w.XGroupCreateMkStream(ctx, "jobs", "workers", "$").Err(); err == nil || !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		t.Fatalf("second XGROUP CREATE: %v", err)
	}
	type got struct {
		who string
		ids []string
		err error
	}
	res := make(chan got, 2)
	for who, c := range map[string]*redis.Client{"a": a, "b": b} {
		go func() {
			s, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: who, Streams: []string{"jobs", ">"}, Count: 10, Block: 0}).Result()
			var ids []string
			for _, st := range s {
				for _, m := range st.Messages {
					ids = append(ids, m.ID)
				}
			}
			res <- got{who, ids, err}
		}()
	}
	// Both consumers wait on their nodes before the first XADD.
	for _, addr := range addrs[:2] {
		c := redis.NewClient(&redis.Options{Addr: addr})
		testcluster.WaitFor(t, waitTime, func() bool {
			info, _ := c.Info(ctx, "clients").Result()
			return strings.Contains(info, "blocked_clients:1")
		})
		c.Close()
	}
	first, err := w.XAdd(ctx, &redis.XAddArgs{Stream: "jobs", Values: []string{"n", "1"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	r1 := <-res
	if r1.err != nil || len(r1.ids) != 1 || r1.ids[0] != first {
		t.Fatalf("woken consumer %s: %v %v, want [%s]", r1.who, r1.ids, r1.err, first)
	}
	second, err := w.XAdd(ctx, &redis.XAddArgs{Stream: "jobs", Values: []string{"n", "2"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	r2 := <-res
	if r2.err != nil || r2.who == r1.who || len(r2.ids) != 1 || r2.ids[0] != second {
		t.Fatalf("other consumer %s: %v %v, want [%s]", r2.who, r2.ids, r2.err, second)
	}
	// XREADGROUP BLOCK with a limit answers nil when nothing comes.
	if _, err := a.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "a", Streams: []string{"jobs", ">"}, Block: 50 * time.Millisecond}).Result(); err != redis.Nil {
		t.Fatalf("XREADGROUP BLOCK 50 with nothing new: %v", err)
	}
	sum, err := b.XPending(ctx, "jobs", "workers").Result()
	if err != nil || sum.Count != 2 || sum.Consumers["a"] != 1 || sum.Consumers["b"] != 1 {
		t.Fatalf("XPENDING: %+v %v", sum, err)
	}
	if n, err := a.XAck(ctx, "jobs", "workers", first, second, "99-0").Result(); err != nil || n != 2 {
		t.Fatalf("XACK: %d %v", n, err)
	}
	// An entry delivered and not acknowledged is claimed by another
	// consumer with XAUTOCLAIM.
	third, _ := w.XAdd(ctx, &redis.XAddArgs{Stream: "jobs", Values: []string{"n", "3"}}).Result()
	testcluster.WaitFor(t, waitTime, func() bool {
		n, _ := a.XLen(ctx, "jobs").Result()
		return n == 3
	})
	if s, err := a.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "a", Streams: []string{"jobs", ">"}}).Result(); err != nil || len(s) != 1 || len(s[0].Messages) != 1 {
		t.Fatalf("XREADGROUP: %v %v", s, err)
	}
	ids, start, err := b.XAutoClaimJustID(ctx, &redis.XAutoClaimArgs{Stream: "jobs", Group: "workers", Consumer: "b", MinIdle: 0, Start: "0"}).Result()
	if err != nil || len(ids) != 1 || ids[0] != third || start != "0-0" {
		t.Fatalf("XAUTOCLAIM: %v %q %v", ids, start, err)
	}
	groups, err := w.XInfoGroups(ctx, "jobs").Result()
	if err != nil || len(groups) != 1 || groups[0].Pending != 1 || groups[0].Consumers != 2 || groups[0].LastDeliveredID != third {
		t.Fatalf("XINFO GROUPS: %+v %v", groups, err)
	}
	// In a transaction XREADGROUP BLOCK does not block.
	var read *redis.XStreamSliceCmd
	if _, err := a.TxPipelined(ctx, func(p redis.Pipeliner) error {
		read = p.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "a", Streams: []string{"jobs", ">"}, Block: 0})
		return nil
	}); err != redis.Nil || read.Err() != redis.Nil {
		t.Fatalf("XREADGROUP BLOCK in MULTI: %v %v", err, read.Err())
	}
}
