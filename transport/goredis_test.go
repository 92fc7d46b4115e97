package transport_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
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

// A go-redis client blocked in BLPOP, BRPOPLPUSH or BLMOVE on a
// follower's Redis listener is woken by an RPUSH through another node:
// the write reaches the follower through the log, and the follower runs
// the pop again. Each case first waits until INFO clients on the
// blocked client's own listener counts it as blocked, so the push
// always comes after the client blocked.
func TestGoRedisBlockingPopAcrossNodes(t *testing.T) {
	_, leader, followers := startThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTime)
	defer cancel()
	client := func(addr string) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 3, MaxRetries: -1})
		t.Cleanup(func() { c.Close() })
		return c
	}
	// blockThenPush starts pop on a fresh listener of the first follower,
	// waits until that listener reports one blocked client, pushes
	// values to key through the other node's listener, and returns what
	// pop answered.
	//
	// A pop is a write, and the leader can change while it commits (a
	// stalled process): TRYAGAIN. Before the push there is nothing to
	// pop, so the pop is sent again. After it, a TRYAGAIN that applied
	// nothing has the pop sent again too; one whose outcome is unknown is
	// followed by a write of the blocked client's own connection that
	// commits (which decides the pop), and then popped reads what the
	// pop left: the answer it would have had if it was applied, else the
	// pop is sent again.
	// settle follows a write of unknown outcome with a write of the same
	// connection (c has one) that commits: a leader that commits an entry
	// of its term has decided every earlier one, and the connection's
	// reads follow its writes.
	settle := func(t *testing.T, c *redis.Client) {
		t.Helper()
		for err := c.Set(ctx, "goredis-test-settle", "1", 0).Err(); err != nil; err = c.Set(ctx, "goredis-test-settle", "1", 0).Err() {
			if !tryAgain(err) || ctx.Err() != nil {
				t.Fatalf("SET after an unknown outcome: %v", err)
			}
		}
	}
	blockThenPush := func(t *testing.T, other *testcluster.Node, key string, pop func(*redis.Client) (any, error),
		popped func(*redis.Client) (any, bool), values ...any) any {
		t.Helper()
		addr := startRESP(t, followers[0])
		// One connection: its reads follow its writes.
		blocked := redis.NewClient(&redis.Options{Addr: addr, Protocol: 3, MaxRetries: -1, PoolSize: 1})
		t.Cleanup(func() { blocked.Close() })
		observer := client(addr)
		type result struct {
			v   any
			err error
		}
		var pushed atomic.Bool
		res := make(chan result, 1)
		go func() {
			for {
				v, err := pop(blocked)
				if tryAgain(err) && !pushed.Load() && ctx.Err() == nil {
					continue // nothing to pop yet, so nothing was popped
				}
				res <- result{v, err}
				return
			}
		}()
		testcluster.WaitFor(t, waitTime, func() bool {
			select {
			case r := <-res:
				t.Fatalf("the pop answered before any push: %v %v", r.v, r.err)
			default:
			}
			info, err := observer.Info(ctx, "clients").Result()
			return err == nil && strings.Contains(info, "blocked_clients:1\r\n")
		})
		pushed.Store(true)
		// The push is a write too. Every case pushes two values and pops
		// one: after an RPUSH of unknown outcome, decided as the pop's
		// above, the key holds a value if and only if it was applied.
		push := redis.NewClient(&redis.Options{Addr: startRESP(t, other), Protocol: 3, MaxRetries: -1, PoolSize: 1})
		t.Cleanup(func() { push.Close() })
		for {
			n, err := push.RPush(ctx, key, values...).Result()
			if tryAgain(err) && ctx.Err() == nil {
				t.Logf("RPUSH %s: %v", key, err)
				if !strings.Contains(err.Error(), "outcome is unknown") {
					continue // nothing was pushed
				}
				settle(t, push)
				if l, err := push.LLen(ctx, key).Result(); err == nil && l > 0 {
					break
				}
				continue
			}
			if err != nil || n != int64(len(values)) {
				t.Fatalf("RPUSH %s: %d %v", key, n, err)
			}
			break
		}
		var r result
		select {
		case r = <-res:
		case <-ctx.Done():
			t.Fatalf("the blocked client was not woken by the push on %s", key)
		}
		for tryAgain(r.err) && ctx.Err() == nil {
			t.Logf("blocking pop on %s: %v", key, r.err)
			if strings.Contains(r.err.Error(), "outcome is unknown") {
				settle(t, blocked)
				if v, ok := popped(blocked); ok {
					r = result{v, nil}
					break
				}
			}
			r.v, r.err = pop(blocked)
		}
		if r.err != nil {
			t.Fatalf("blocking pop on %s: %v", key, r.err)
		}
		testcluster.WaitFor(t, waitTime, func() bool {
			info, err := observer.Info(ctx, "clients").Result()
			return err == nil && strings.Contains(info, "blocked_clients:0\r\n")
		})
		return r.v
	}
	// list reads a list through c; only says whether it is want.
	list := func(c *redis.Client, key string, want ...string) bool {
		v, err := c.LRange(ctx, key, 0, -1).Result()
		return err == nil && slices.Equal(v, want)
	}

	t.Run("BLPOP", func(t *testing.T) {
		got := blockThenPush(t, followers[1], "bq", func(c *redis.Client) (any, error) {
			return c.BLPop(ctx, waitTime, "bq-empty", "bq").Result()
		}, func(c *redis.Client) (any, bool) {
			return []string{"bq", "first"}, list(c, "bq", "second")
		}, "first", "second")
		if kv := got.([]string); len(kv) != 2 || kv[0] != "bq" || kv[1] != "first" {
			t.Fatalf("BLPOP answered %q, want [bq first]", kv)
		}
		// The element not popped stays, on every node (the first leader
		// may follow by now, and apply the pop on its own time).
		l := client(startRESP(t, leader))
		testcluster.WaitFor(t, waitTime, func() bool { return list(l, "bq", "second") })
	})
	t.Run("BRPOPLPUSH", func(t *testing.T) {
		got := blockThenPush(t, leader, "src1", func(c *redis.Client) (any, error) {
			return c.BRPopLPush(ctx, "src1", "dst1", waitTime).Result()
		}, func(c *redis.Client) (any, bool) {
			return "y", list(c, "dst1", "y")
		}, "x", "y")
		if got.(string) != "y" {
			t.Fatalf("BRPOPLPUSH answered %q, want y", got)
		}
		l := client(startRESP(t, leader))
		testcluster.WaitFor(t, waitTime, func() bool {
			dst, err1 := l.LRange(ctx, "dst1", 0, -1).Result()
			src, err2 := l.LRange(ctx, "src1", 0, -1).Result()
			return err1 == nil && err2 == nil && len(dst) == 1 && dst[0] == "y" && len(src) == 1 && src[0] == "x"
		})
	})
	t.Run("BLMOVE", func(t *testing.T) {
		got := blockThenPush(t, followers[1], "src2", func(c *redis.Client) (any, error) {
			return c.BLMove(ctx, "src2", "dst2", "LEFT", "RIGHT", waitTime).Result()
		}, func(c *redis.Client) (any, bool) {
			return "p", list(c, "dst2", "p")
		}, "p", "q")
		if got.(string) != "p" {
			t.Fatalf("BLMOVE answered %q, want p", got)
		}
		f := client(startRESP(t, followers[1]))
		testcluster.WaitFor(t, waitTime, func() bool {
			dst, err1 := f.LRange(ctx, "dst2", 0, -1).Result()
			src, err2 := f.LRange(ctx, "src2", 0, -1).Result()
			return err1 == nil && err2 == nil && len(dst) == 1 && dst[0] == "p" && len(src) == 1 && src[0] == "q"
		})
	})
	// A blocking pop that nothing wakes answers nil at its timeout. Its
	// pop is a write: a leader change while it commits (a stalled
	// process) answers TRYAGAIN, and as nobody pushes the key, sending
	// it again can only answer the same.
	t.Run("timeout", func(t *testing.T) {
		c := client(startRESP(t, followers[0]))
		v, err := c.BLPop(ctx, 100*time.Millisecond, "never").Result()
		for tryAgain(err) && ctx.Err() == nil {
			t.Logf("BLPOP on a key nobody pushes: %v; again", err)
			v, err = c.BLPop(ctx, 100*time.Millisecond, "never").Result()
		}
		if err != redis.Nil {
			t.Fatalf("BLPOP on a key nobody pushes: %q %v, want redis.Nil", v, err)
		}
	})
}

// Pub/sub across nodes with go-redis, in RESP2 and RESP3: a client
// subscribed on a follower's listener to two channels and a pattern
// receives what PUBLISH sends through the leader's listener, once per
// matching subscription, with the channel, the pattern and the payload.
func TestGoRedisPubSubAcrossNodes(t *testing.T) {
	_, leader, followers := startThree(t)
	for _, proto := range []int{2, 3} {
		t.Run("RESP"+strconv.Itoa(proto), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitTime)
			defer cancel()
			newClient := func(addr string) *redis.Client {
				c := redis.NewClient(&redis.Options{Addr: addr, Protocol: proto, MaxRetries: -1})
				t.Cleanup(func() { c.Close() })
				return c
			}
			p := "p" + strconv.Itoa(proto) + "."
			room, sports, pattern := p+"chat:room", p+"news.sports", p+"news.*"
			sub := newClient(startRESP(t, followers[0]))
			pub := newClient(startRESP(t, leader))

			ps := sub.Subscribe(ctx, room, sports)
			t.Cleanup(func() { ps.Close() })
			if err := ps.PSubscribe(ctx, pattern); err != nil {
				t.Fatal(err)
			}
			// The three confirmations, in order: the subscriptions are in
			// place on the follower before anything is published.
			want := []redis.Subscription{
				{Kind: "subscribe", Channel: room, Count: 1},
				{Kind: "subscribe", Channel: sports, Count: 2},
				{Kind: "psubscribe", Channel: pattern, Count: 3},
			}
			for _, w := range want {
				m, err := ps.ReceiveTimeout(ctx, waitTime)
				if err != nil {
					t.Fatalf("waiting for %s %s: %v", w.Kind, w.Channel, err)
				}
				if s, ok := m.(*redis.Subscription); !ok || *s != w {
					t.Fatalf("confirmation %#v, want %+v", m, w)
				}
			}
			ch := ps.Channel()
			receive := func(n int) []redis.Message {
				t.Helper()
				var got []redis.Message
				for len(got) < n {
					select {
					case m, ok := <-ch:
						if !ok {
							t.Fatalf("the subscription's channel closed after %v", got)
						}
						got = append(got, *m)
					case <-ctx.Done():
						t.Fatalf("received %v, want %d messages", got, n)
					}
				}
				return got
			}

			if err := pub.Publish(ctx, room, "hello").Err(); err != nil {
				t.Fatal(err)
			}
			if got := receive(1); got[0].Channel != room || got[0].Pattern != "" || got[0].Payload != "hello" {
				t.Fatalf("message on %s: %+v", room, got[0])
			}
			// news.sports matches the channel and the pattern: two messages.
			if err := pub.Publish(ctx, sports, "goal").Err(); err != nil {
				t.Fatal(err)
			}
			got := receive(2)
			var direct, matched int
			for _, m := range got {
				switch {
				case m.Channel == sports && m.Pattern == "" && m.Payload == "goal":
					direct++
				case m.Channel == sports && m.Pattern == pattern && m.Payload == "goal":
					matched++
				default:
					t.Fatalf("unexpected message %+v", m)
				}
			}
			if direct != 1 || matched != 1 {
				t.Fatalf("messages for %s: %+v, want one on the channel and one on the pattern", sports, got)
			}
			// Only the pattern matches news.weather.
			if err := pub.Publish(ctx, p+"news.weather", "rain").Err(); err != nil {
				t.Fatal(err)
			}
			if got := receive(1); got[0].Channel != p+"news.weather" || got[0].Pattern != pattern || got[0].Payload != "rain" {
				t.Fatalf("message on %snews.weather: %+v", p, got[0])
			}
			// After UNSUBSCRIBE of the room, a message to it is not
			// delivered: the next message is the one published after it.
			if err := ps.Unsubscribe(ctx, room); err != nil {
				t.Fatal(err)
			}
			testcluster.WaitFor(t, waitTime, func() bool {
				n, err := sub.PubSubNumSub(ctx, room).Result()
				return err == nil && n[room] == 0
			})
			if err := pub.Publish(ctx, room, "nobody").Err(); err != nil {
				t.Fatal(err)
			}
			if err := pub.Publish(ctx, sports, "last").Err(); err != nil {
				t.Fatal(err)
			}
			for _, m := range receive(2) {
				if m.Channel != sports || m.Payload != "last" {
					t.Fatalf("after UNSUBSCRIBE %s: %+v", room, m)
				}
			}
		})
	}
}
