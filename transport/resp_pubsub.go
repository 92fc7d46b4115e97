package transport

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"sort"
	"strings"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/kv"
	"github.com/mcpd/mcpd/queue"
)

// Redis pub/sub. PUBLISH goes through the log (fsm.RedisArgs "PUBLISH"):
// every node hands the message to its Redis subscribers (fsm.Published),
// and a channel that is also a topic reaches the WebSocket subscribers too,
// in an envelope. A WebSocket publish reaches the Redis subscribers of the
// channel of the same name as its envelope's JSON. Subscriptions are the
// node's own, like Redis Cluster's: PUBLISH counts the WebSocket
// subscriptions of the cluster and the Redis subscribers of this node,
// and PUBSUB answers for this node.

// respSubs is a connection's subscriptions (reader goroutine only; the
// server's maps, under pmu, are what delivery reads).
type respSubs struct {
	channels map[string]bool
	patterns map[string]bool
}

func (c *respConn) subCount() int { return len(c.subs.channels) + len(c.subs.patterns) }

// pushValue queues a message for the client without blocking: it runs on
// the apply path. A client too slow to take its messages is closed.
func (c *respConn) pushValue(v kv.Value) {
	f := ready(v)
	f.push = true
	c.omu.Lock()
	defer c.omu.Unlock()
	if c.outClosed {
		return
	}
	select {
	case c.out <- f:
	default:
		c.outClosed = true
		c.s.log.Warn("closing a slow Redis subscriber", "client", c.id)
		c.nc.Close()
	}
}

// deliver hands a publish to the local subscribers of its channel.
func (s *RESPServer) deliver(p *fsm.Published) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	ch := string(p.Channel)
	for c := range s.chanSubs[ch] {
		c.pushValue(kv.ArrayOf(kv.BulkStr("message"), kv.BulkOf(p.Channel), kv.BulkOf(p.Message)))
	}
	for pat, conns := range s.patSubs {
		if !kv.Match([]byte(pat), p.Channel) {
			continue
		}
		for c := range conns {
			c.pushValue(kv.ArrayOf(kv.BulkStr("pmessage"), kv.BulkStr(pat), kv.BulkOf(p.Channel), kv.BulkOf(p.Message)))
		}
	}
}

// localReceivers counts this node's Redis subscribers of a channel.
func (s *RESPServer) localReceivers(ch []byte) int64 {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	n := int64(len(s.chanSubs[string(ch)]))
	for pat, conns := range s.patSubs {
		if kv.Match([]byte(pat), ch) {
			n += int64(len(conns))
		}
	}
	return n
}

// subscribe answers (P)SUBSCRIBE and (P)UNSUBSCRIBE: one reply per name.
func (c *respConn) subscribe(name string, args [][]byte) {
	pattern := name[0] == 'p'
	unsub := strings.Contains(name, "unsub")
	if !unsub && len(args) < 2 {
		c.enqueue(ready(kv.ErrArity(name)))
		return
	}
	mine, all := c.subs.channels, c.s.chanSubs
	if pattern {
		mine, all = c.subs.patterns, c.s.patSubs
	}
	names := args[1:]
	if unsub && len(names) == 0 {
		for n := range mine {
			names = append(names, []byte(n))
		}
		sort.Slice(names, func(i, j int) bool { return string(names[i]) < string(names[j]) })
		if len(names) == 0 {
			c.enqueue(c.subReply(name, nil))
			return
		}
	}
	if !unsub && c.agent != nil {
		for _, n := range names {
			if !c.agent.ACL.Allows(auth.OpSubscribe, string(n)) {
				c.record(fsm.AuthEventArgs{Kind: "denied", Agent: c.agent.Name, Subject: "redis subscribe " + string(n), Code: "forbidden"})
				c.enqueue(ready(kv.Err("NOPERM this user has no permissions to access one of the channels used as arguments")))
				return
			}
		}
	}
	for _, n := range names {
		key := string(n)
		c.s.pmu.Lock()
		if unsub {
			if mine[key] {
				delete(mine, key)
				delete(all[key], c)
				if len(all[key]) == 0 {
					delete(all, key)
				}
			}
		} else if !mine[key] {
			mine[key] = true
			if all[key] == nil {
				all[key] = map[*respConn]struct{}{}
			}
			all[key][c] = struct{}{}
		}
		c.s.pmu.Unlock()
		c.enqueue(c.subReply(name, n))
	}
}

// subReply is ["subscribe", name, count] and its kind, a push in RESP3.
func (c *respConn) subReply(kind string, n []byte) *respFuture {
	name := kv.NilBulk
	if n != nil {
		name = kv.BulkOf(clone(n))
	}
	f := ready(kv.ArrayOf(kv.BulkStr(kind), name, kv.Integer(int64(c.subCount()))))
	f.push = true
	return f
}

// dropSubs removes a closing connection's subscriptions.
func (c *respConn) dropSubs() {
	c.s.pmu.Lock()
	defer c.s.pmu.Unlock()
	for n := range c.subs.channels {
		delete(c.s.chanSubs[n], c)
		if len(c.s.chanSubs[n]) == 0 {
			delete(c.s.chanSubs, n)
		}
	}
	for n := range c.subs.patterns {
		delete(c.s.patSubs[n], c)
		if len(c.s.patSubs[n]) == 0 {
			delete(c.s.patSubs, n)
		}
	}
}

// publish proposes PUBLISH; a channel that is also a topic carries an
// envelope for the WebSocket subscribers.
func (c *respConn) publish(args [][]byte) *respFuture {
	if len(args) != 3 {
		return ready(kv.ErrArity("publish"))
	}
	if c.agent != nil && !c.agent.ACL.Allows(auth.OpPublish, string(args[1])) {
		c.record(fsm.AuthEventArgs{Kind: "denied", Agent: c.agent.Name, Subject: "redis publish " + string(args[1]), Code: "forbidden"})
		return ready(kv.Err("NOPERM this user has no permissions to access one of the channels used as arguments"))
	}
	body := &fsm.RedisArgs{Args: [][]byte{[]byte("PUBLISH"), clone(args[1]), clone(args[2])}}
	if queue.ValidTopic(string(args[1]), false) {
		from := "redis"
		if c.agent != nil {
			from = c.agent.Name
		}
		id := make([]byte, 16)
		_, _ = rand.Read(id)
		msg, _ := json.Marshal(string(args[2]))
		env, _ := json.Marshal(map[string]any{"id": "redis-" + hex.EncodeToString(id), "from": from, "ts": c.s.node.Now(), "body": json.RawMessage(msg)})
		if e, err := auth.ParseEnvelope(env); err == nil {
			body.Env, body.From, body.ID, body.Hash = env, e.From, e.ID, e.Hash
		}
	}
	inner := c.submit(body)
	f := &respFuture{done: make(chan struct{})}
	go func() {
		<-inner.done
		v := inner.value
		if v.K == kv.Int {
			// This node applied it: its Redis subscribers have it.
			v.I += c.s.localReceivers(args[1])
		}
		f.resolve(v)
	}()
	return f
}

// pubsubCommand answers PUBSUB CHANNELS|NUMSUB|NUMPAT for this node.
func (c *respConn) pubsubCommand(args [][]byte) kv.Value {
	if len(args) < 2 {
		return kv.ErrArity("pubsub")
	}
	c.s.pmu.Lock()
	defer c.s.pmu.Unlock()
	switch strings.ToLower(string(args[1])) {
	case "channels":
		var out []kv.Value
		names := make([]string, 0, len(c.s.chanSubs))
		for n := range c.s.chanSubs {
			if len(args) < 3 || kv.Match(args[2], []byte(n)) {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		for _, n := range names {
			out = append(out, kv.BulkStr(n))
		}
		return kv.Value{K: kv.Array, A: out}
	case "numsub":
		var out []kv.Value
		for _, n := range args[2:] {
			out = append(out, kv.BulkOf(clone(n)), kv.Integer(int64(len(c.s.chanSubs[string(n)]))))
		}
		return kv.Value{K: kv.Array, A: out}
	case "numpat":
		return kv.Integer(int64(len(c.s.patSubs)))
	}
	return kv.Err("ERR unknown subcommand '" + string(args[1]) + "'. Try PUBSUB HELP.")
}
