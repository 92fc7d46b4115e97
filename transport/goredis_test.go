package transport_test

import (
	"context"
	"strconv"
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
