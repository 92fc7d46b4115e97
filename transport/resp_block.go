package transport

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/kv"
	"github.com/mcpd/mcpd/queue"
)

// Blocking list commands (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP) run
// their non-blocking form through the log; when it finds nothing, the
// connection waits until a write on any node touches one of the keys
// (fsm.RedisTouched, applied on every node) and tries again, until the
// timeout. The connection's later commands wait for it, as in Redis.

// blocking describes a blocking command: its non-blocking form, the keys
// to watch, how to shape the reply, and the reply on timeout.
type blocking struct {
	inner   [][]byte
	keys    [][]byte
	timeout time.Duration // 0: forever
	shape   func(kv.Value) kv.Value
	none    kv.Value
}

var blockingArity = map[string]int{"blpop": -3, "brpop": -3, "blmove": 6, "brpoplpush": 4, "blmpop": -5}

// parseBlocking returns the plan of a blocking command, or its error.
func parseBlocking(name string, args [][]byte) (*blocking, kv.Value, bool) {
	ar := blockingArity[name]
	if (ar > 0 && len(args) != ar) || (ar < 0 && len(args) < -ar) {
		return nil, kv.ErrArity(name), false
	}
	parseTimeout := func(b []byte) (time.Duration, kv.Value, bool) {
		f, err := strconv.ParseFloat(string(b), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, kv.Err("ERR timeout is not a float or out of range"), false
		}
		if f < 0 {
			return 0, kv.Err("ERR timeout is negative"), false
		}
		if f > float64(math.MaxInt64)/float64(time.Second) {
			return 0, kv.Err("ERR timeout is out of range"), false
		}
		return time.Duration(f * float64(time.Second)), kv.Value{}, true
	}
	word := func(s string) []byte { return []byte(s) }
	switch name {
	case "blpop", "brpop":
		d, e, ok := parseTimeout(args[len(args)-1])
		if !ok {
			return nil, e, false
		}
		keys := args[1 : len(args)-1]
		dir := "LEFT"
		if name == "brpop" {
			dir = "RIGHT"
		}
		inner := [][]byte{word("LMPOP"), word(strconv.Itoa(len(keys)))}
		inner = append(inner, keys...)
		inner = append(inner, word(dir), word("COUNT"), word("1"))
		return &blocking{inner: inner, keys: keys, timeout: d, none: kv.Value{K: kv.NullArray},
			shape: func(v kv.Value) kv.Value {
				if v.K == kv.Array && len(v.A) == 2 && v.A[1].K == kv.Array && len(v.A[1].A) == 1 {
					return kv.ArrayOf(v.A[0], v.A[1].A[0])
				}
				return v
			}}, kv.Value{}, true
	case "blmove":
		d, e, ok := parseTimeout(args[5])
		if !ok {
			return nil, e, false
		}
		return &blocking{inner: [][]byte{word("LMOVE"), args[1], args[2], args[3], args[4]}, keys: args[1:2],
			timeout: d, none: kv.NilBulk, shape: func(v kv.Value) kv.Value { return v }}, kv.Value{}, true
	case "brpoplpush":
		d, e, ok := parseTimeout(args[3])
		if !ok {
			return nil, e, false
		}
		return &blocking{inner: [][]byte{word("RPOPLPUSH"), args[1], args[2]}, keys: args[1:2],
			timeout: d, none: kv.NilBulk, shape: func(v kv.Value) kv.Value { return v }}, kv.Value{}, true
	case "blmpop":
		d, e, ok := parseTimeout(args[1])
		if !ok {
			return nil, e, false
		}
		inner := append([][]byte{word("LMPOP")}, args[2:]...)
		if v, ok := kv.Check(inner); !ok {
			return nil, v, false
		}
		keys, _ := kv.KeysOf(inner)
		return &blocking{inner: inner, keys: keys, timeout: d, none: kv.Value{K: kv.NullArray},
			shape: func(v kv.Value) kv.Value { return v }}, kv.Value{}, true
	}
	return nil, kv.ErrUnknown(name, args[1:]), false
}

// isNone reports whether a non-blocking pop found nothing.
func isNone(v kv.Value) bool { return v.K == kv.Null || v.K == kv.NullArray }

// block runs a blocking command; its future resolves when it pops or
// times out. The connection's next commands wait for it (c.blocked).
func (c *respConn) block(b *blocking) *respFuture {
	inner := make([][]byte, len(b.inner))
	for i, a := range b.inner {
		inner[i] = clone(a)
	}
	return c.blockOn(b.keys, b.timeout, b.none, func() (kv.Value, bool) {
		r := c.submit(&fsm.RedisArgs{Args: inner})
		<-r.done
		if r.value.IsErr() || !isNone(r.value) {
			return b.shape(r.value), true
		}
		return kv.Value{}, false
	})
}

// blockOn is the wait of every blocking command: attempt runs until it
// gives the reply, and after each attempt that found nothing the command
// waits for an applied write naming one of keys (registered before the
// first attempt, so none is missed), until timeout (0: forever) gives the
// reply none. The connection's next command waits for the future.
func (c *respConn) blockOn(keys [][]byte, timeout time.Duration, none kv.Value, attempt func() (kv.Value, bool)) *respFuture {
	f := &respFuture{done: make(chan struct{})}
	c.blocked = f
	w := make(chan struct{}, 1)
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = string(k)
	}
	c.s.watch(names, w)
	go func() {
		defer c.s.unwatch(names, w)
		waiting := false
		defer func() {
			if waiting {
				c.s.blockedClients.Add(-1)
			}
		}()
		var deadline <-chan time.Time
		if timeout > 0 {
			t := time.NewTimer(timeout)
			defer t.Stop()
			deadline = t.C
		}
		for {
			if v, done := attempt(); done {
				f.resolve(v)
				return
			}
			if !waiting {
				// Counted once it has found nothing (INFO blocked_clients).
				waiting = true
				c.s.blockedClients.Add(1)
			}
			select {
			case <-w:
			case <-deadline:
				f.resolve(none)
				return
			case <-c.stop:
				f.resolve(kv.Err("ERR connection closed"))
				return
			}
		}
	}()
	return f
}

// watch registers a waiter on keys; Touch wakes it.
func (s *RESPServer) watch(keys []string, w chan struct{}) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.waiters == nil {
		s.waiters = map[string]map[chan struct{}]struct{}{}
	}
	for _, k := range keys {
		set := s.waiters[k]
		if set == nil {
			set = map[chan struct{}]struct{}{}
			s.waiters[k] = set
		}
		set[w] = struct{}{}
	}
}

func (s *RESPServer) unwatch(keys []string, w chan struct{}) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for _, k := range keys {
		if set := s.waiters[k]; set != nil {
			delete(set, w)
			if len(set) == 0 {
				delete(s.waiters, k)
			}
		}
	}
}

// Touch wakes the clients blocked on the keys an applied write named. It
// runs on the apply path (cluster.Node's effects) and does not block.
func (s *RESPServer) Touch(e queue.Effect) {
	if p, ok := e.(*fsm.Published); ok {
		s.deliver(p)
		return
	}
	t, ok := e.(*fsm.RedisTouched)
	if !ok {
		return
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for _, k := range t.Keys {
		for w := range s.waiters[string(k)] {
			select {
			case w <- struct{}{}:
			default:
			}
		}
	}
}

// isBlocking reports whether name (lowercase) is a blocking command.
func isBlocking(name string) bool {
	_, ok := blockingArity[name]
	return ok
}

// blockRead waits for XREAD BLOCK or XREADGROUP BLOCK (inner is the
// command without its BLOCK option, which kv.ReadBlock gives). XREAD's
// "$" ids are fixed at the streams' current last ids, then the read runs
// again on this node's state each time an applied write names one of its
// keys, until it finds entries or the BLOCK time passes (null reply).
// XREADGROUP, which changes its group, goes through the log each time.
func (c *respConn) blockRead(inner, keys [][]byte, ms int64) *respFuture {
	timeout := time.Duration(ms) * time.Millisecond
	if strings.EqualFold(string(inner[0]), "xreadgroup") {
		return c.blockOn(keys, timeout, kv.Value{K: kv.NullArray}, func() (kv.Value, bool) {
			r := c.submit(&fsm.RedisArgs{Args: inner})
			<-r.done
			return r.value, r.value.IsErr() || !isNone(r.value)
		})
	}
	n := len(keys)
	for i, k := range keys {
		if id := inner[len(inner)-n+i]; string(id) == "$" {
			inner[len(inner)-n+i] = []byte(c.lastStreamID(k))
		}
	}
	return c.blockOn(keys, timeout, kv.Value{K: kv.NullArray}, func() (kv.Value, bool) {
		v := c.read(inner)
		return v, !isNone(v)
	})
}

// lastStreamID is the id of a stream's newest entry on this node, or
// "0-0": what "$" means when a blocking XREAD starts.
func (c *respConn) lastStreamID(key []byte) string {
	v := c.read([][]byte{[]byte("XREVRANGE"), key, []byte("+"), []byte("-"), []byte("COUNT"), []byte("1")})
	if v.K == kv.Array && len(v.A) == 1 && len(v.A[0].A) > 0 {
		return string(v.A[0].A[0].S)
	}
	return "0-0"
}
