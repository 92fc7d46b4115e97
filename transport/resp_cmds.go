package transport

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/kv"
	bolt "go.etcd.io/bbolt"
)

// respMulti is a transaction being queued: keyspace commands for one log
// entry, and the replies of connection commands (PING, ECHO) known at
// once, in their places.
type respMulti struct {
	cmds   [][][]byte
	shapes []func(kv.Value) kv.Value // per command: its reply's shape (a blocking command's), or nil
	slots  []*kv.Value               // nil: the next keyspace reply; else this reply
	failed bool                      // a command was refused while queueing: EXECABORT
}

// watchedKey is a key WATCH watches, with its digest then.
type watchedKey struct {
	key []byte
	sum [32]byte
}

// watch answers WATCH key [key ...]: it takes each key's digest on this
// node's state after the connection's own writes; EXEC then runs only if
// they are unchanged when it is applied (fsm.RedisArgs.Watch).
func (c *respConn) watch(args [][]byte) kv.Value {
	if len(args) < 2 {
		return kv.ErrArity("watch")
	}
	if c.multi != nil {
		return kv.Err("ERR WATCH inside MULTI is not allowed")
	}
	for _, k := range args[1:] {
		if _, q := kv.QueueOf(k); q {
			return kv.Err("ERR WATCH does not apply to an mcpd queue (the 'mcp:' keys, docs/redis.md)")
		}
		if c.agent != nil && !c.agent.ACL.Allows(auth.OpKeys, string(k)) {
			c.record(fsm.AuthEventArgs{Kind: "denied", Agent: c.agent.Name, Subject: "redis key " + string(k), Code: "forbidden"})
			return kv.Err("NOPERM this user has no permissions to access one of the keys used as arguments")
		}
	}
	c.mu.Lock()
	last := c.last
	c.mu.Unlock()
	if last != nil {
		<-last.done
	}
	err := c.s.node.Read(func(tx *bolt.Tx) error {
		now := c.s.node.Now()
	keys:
		for _, k := range args[1:] {
			for _, w := range c.watched {
				if bytes.Equal(w.key, k) {
					continue keys // the first WATCH of a key counts
				}
			}
			c.watched = append(c.watched, watchedKey{key: clone(k), sum: kv.Digest(tx, now, k)})
		}
		return nil
	})
	if err != nil {
		return kv.Err("TRYAGAIN " + err.Error())
	}
	return kv.OK
}

// watchChanged reports whether a watched key differs on this node now.
func (c *respConn) watchChanged(ws []watchedKey) bool {
	changed := false
	_ = c.s.node.Read(func(tx *bolt.Tx) error {
		now := c.s.node.Now()
		for _, w := range ws {
			changed = changed || kv.Digest(tx, now, w.key) != w.sum
		}
		return nil
	})
	return changed
}

// queueInMulti queues a command inside MULTI and answers QUEUED; it
// returns false for the commands that act at once (EXEC, DISCARD, MULTI,
// QUIT, RESET).
func (c *respConn) queueInMulti(name string, args [][]byte) bool {
	switch name {
	case "exec", "discard", "multi", "quit", "reset", "watch":
		return false
	case "unwatch":
		// Queued, it runs after EXEC checked the watched keys: a no-op.
		v := kv.OK
		if len(args) != 1 {
			c.multi.failed = true
			c.enqueue(ready(kv.ErrArity(name)))
			return true
		}
		c.multi.slots = append(c.multi.slots, &v)
		c.enqueue(ready(kv.Str("QUEUED")))
		return true
	case "ping", "echo":
		f, _ := c.connCommand(name, args)
		v := f.value
		if v.IsErr() {
			c.multi.failed = true
			c.enqueue(ready(v))
			return true
		}
		c.multi.slots = append(c.multi.slots, &v)
		c.enqueue(ready(kv.Str("QUEUED")))
		return true
	}
	var shape func(kv.Value) kv.Value
	if isBlocking(name) {
		// In a transaction a blocking command does not block, as in
		// Redis: it runs its non-blocking form and answers null when
		// there is nothing.
		b, v, ok := parseBlocking(name, args)
		if !ok {
			if v.IsErr() && strings.HasPrefix(string(v.S), "ERR wrong number of arguments") {
				c.multi.failed = true
				c.enqueue(ready(v))
				return true
			}
			// A bad timeout is the command's own error inside EXEC.
			c.multi.slots = append(c.multi.slots, &v)
			c.enqueue(ready(kv.Str("QUEUED")))
			return true
		}
		args, shape = b.inner, b.shape
	}
	if v, ok := kv.Help(args); ok {
		// Answered in its place when EXEC runs, without the log.
		c.multi.slots = append(c.multi.slots, &v)
		c.enqueue(ready(kv.Str("QUEUED")))
		return true
	}
	if v, ok := kv.Check(args); !ok {
		c.multi.failed = true
		c.enqueue(ready(v))
		return true
	}
	if v, ok := c.allowKeys(args); !ok {
		c.multi.failed = true
		c.enqueue(ready(v))
		return true
	}
	if name == "xadd" && kv.NamesQueue(args) {
		// Its envelope is made when it is proposed, which a queued
		// command is not.
		c.multi.failed = true
		c.enqueue(ready(kv.Err("ERR XADD to an mcpd queue cannot be part of a transaction")))
		return true
	}
	cp := make([][]byte, len(args))
	for i, a := range args {
		cp[i] = clone(a)
	}
	c.multi.cmds = append(c.multi.cmds, cp)
	c.multi.shapes = append(c.multi.shapes, shape)
	c.multi.slots = append(c.multi.slots, nil)
	c.enqueue(ready(kv.Str("QUEUED")))
	return true
}

// transaction answers MULTI, EXEC and DISCARD.
func (c *respConn) transaction(name string, args [][]byte) *respFuture {
	if len(args) != 1 {
		return ready(kv.ErrArity(name))
	}
	if !c.authed {
		return ready(kv.Err("NOAUTH Authentication required."))
	}
	switch name {
	case "multi":
		if c.multi != nil {
			return ready(kv.Err("ERR MULTI calls can not be nested"))
		}
		c.multi = &respMulti{}
		return ready(kv.OK)
	case "discard":
		if c.multi == nil {
			return ready(kv.Err("ERR DISCARD without MULTI"))
		}
		c.multi, c.watched = nil, nil
		return ready(kv.OK)
	}
	m := c.multi
	if m == nil {
		return ready(kv.Err("ERR EXEC without MULTI"))
	}
	watched := c.watched
	c.multi, c.watched = nil, nil
	if m.failed {
		return ready(kv.Err("EXECABORT Transaction discarded because of previous errors."))
	}
	if len(m.cmds) == 0 {
		// Nothing to apply: the watched keys are checked here.
		if len(watched) > 0 && c.watchChanged(watched) {
			return ready(kv.Value{K: kv.NullArray})
		}
		out := make([]kv.Value, len(m.slots))
		for i, s := range m.slots {
			out[i] = *s
		}
		return ready(kv.ArrayOf(out...))
	}
	body := &fsm.RedisArgs{Multi: m.cmds}
	for _, w := range watched {
		body.Watch = append(body.Watch, w.key)
		body.Sums = append(body.Sums, bytes.Clone(w.sum[:]))
	}
	inner := c.submit(body)
	if len(m.cmds) == len(m.slots) && !slices.ContainsFunc(m.shapes, func(f func(kv.Value) kv.Value) bool { return f != nil }) {
		return inner
	}
	// Put the connection commands' replies back in their places, and
	// the blocking commands' replies in their shapes.
	f := &respFuture{done: make(chan struct{})}
	go func() {
		<-inner.done
		v := inner.value
		if v.K != kv.Array {
			f.resolve(v)
			return
		}
		out := make([]kv.Value, 0, len(m.slots))
		next := 0
		for _, s := range m.slots {
			if s != nil {
				out = append(out, *s)
				continue
			}
			r := v.A[next]
			if shape := m.shapes[next]; shape != nil && !r.IsErr() {
				r = shape(r)
			}
			out = append(out, r)
			next++
		}
		f.resolve(kv.ArrayOf(out...))
	}()
	return f
}

// client answers CLIENT ID|SETNAME|GETNAME|SETINFO|INFO|LIST.
func (c *respConn) client(args [][]byte) kv.Value {
	if len(args) < 2 {
		return kv.ErrArity("client")
	}
	sub := strings.ToLower(string(args[1]))
	switch sub {
	case "id":
		if len(args) != 2 {
			return kv.ErrArity("client|id")
		}
		return kv.Integer(c.id)
	case "getname":
		if len(args) != 2 {
			return kv.ErrArity("client|getname")
		}
		if n := c.clientName(); n != "" {
			return kv.BulkStr(n)
		}
		return kv.NilBulk
	case "setname":
		if len(args) != 3 {
			return kv.ErrArity("client|setname")
		}
		for _, b := range args[2] {
			if b <= ' ' || b > '~' {
				return kv.Err("ERR Client names cannot contain spaces, newlines or special characters.")
			}
		}
		name := string(args[2])
		c.name.Store(&name)
		return kv.OK
	case "setinfo":
		if len(args) != 4 {
			return kv.ErrArity("client|setinfo")
		}
		switch strings.ToLower(string(args[2])) {
		case "lib-name", "lib-ver":
			return kv.OK
		}
		return kv.Err("ERR Unrecognized option '" + string(args[2]) + "'")
	case "info":
		return kv.BulkStr(c.describe() + "\n")
	case "list":
		var lines []string
		c.s.mu.Lock()
		for o := range c.s.conns {
			lines = append(lines, o.describe())
		}
		c.s.mu.Unlock()
		sort.Strings(lines)
		return kv.BulkStr(strings.Join(lines, "\n") + "\n")
	}
	return kv.Err("ERR unknown subcommand '" + string(args[1]) + "'. Try CLIENT HELP.")
}

// describe is the connection's line in CLIENT LIST.
func (c *respConn) describe() string {
	return fmt.Sprintf("id=%d addr=%s laddr=%s name=%s db=0 resp=%d node=%s",
		c.id, c.nc.RemoteAddr(), c.nc.LocalAddr(), c.clientName(), c.proto.Load(), c.s.node.ID())
}

// clientName is the name CLIENT SETNAME gave, or "".
func (c *respConn) clientName() string {
	if n := c.name.Load(); n != nil {
		return *n
	}
	return ""
}

// commandReply answers COMMAND, COMMAND COUNT|INFO|DOCS|LIST.
func commandReply(args [][]byte) kv.Value {
	all := kv.Commands()
	for _, n := range connCommandNames {
		all = append(all, kv.Info{Name: n.name, Arity: n.arity})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	byName := map[string]kv.Info{}
	for _, i := range all {
		byName[i.Name] = i
	}
	if len(args) == 1 {
		out := make([]kv.Value, len(all))
		for i, info := range all {
			out[i] = commandInfo(info)
		}
		return kv.ArrayOf(out...)
	}
	switch strings.ToLower(string(args[1])) {
	case "count":
		return kv.Integer(int64(len(all)))
	case "list":
		out := make([]kv.Value, len(all))
		for i, info := range all {
			out[i] = kv.BulkStr(info.Name)
		}
		return kv.ArrayOf(out...)
	case "info":
		var out []kv.Value
		for _, a := range args[2:] {
			if info, ok := byName[strings.ToLower(string(a))]; ok {
				out = append(out, commandInfo(info))
			} else {
				out = append(out, kv.Value{K: kv.NullArray})
			}
		}
		return kv.ArrayOf(out...)
	case "docs":
		// mcpd keeps no command documentation. An error, not an empty
		// map, is what makes redis-cli fall back to the help it was built
		// with, so that it shows its argument hints.
		return kv.Err("ERR COMMAND DOCS is not supported: mcpd keeps no command documentation")
	}
	return kv.Err("ERR unknown subcommand '" + string(args[1]) + "'. Try COMMAND HELP.")
}

// connCommandNames are the commands the connection answers itself.
var connCommandNames = []struct {
	name  string
	arity int
}{
	{"ping", -1}, {"echo", 2}, {"hello", -1}, {"select", 2}, {"quit", -1}, {"reset", 1},
	{"multi", 1}, {"exec", 1}, {"discard", 1}, {"client", -2}, {"command", -1}, {"info", -1},
	{"subscribe", -2}, {"unsubscribe", -1}, {"psubscribe", -2}, {"punsubscribe", -1}, {"publish", 3}, {"pubsub", -2},
	{"watch", -2}, {"unwatch", 1},
}

// commandInfo is one COMMAND entry: name, arity, flags, first key, last
// key, step, and empty ACL categories, tips, key specs and subcommands.
func commandInfo(i kv.Info) kv.Value {
	flag := "readonly"
	if i.Write {
		flag = "write"
	}
	first, last := int64(1), int64(1)
	switch i.Name {
	case "mget", "del", "unlink", "exists":
		last = -1
	case "mset":
		last = -1
	}
	if _, conn := connFlags[i.Name]; conn {
		flag, first, last = "fast", 0, 0
	}
	step := int64(1)
	if i.Name == "mset" {
		step = 2
	}
	if first == 0 {
		step = 0
	}
	return kv.ArrayOf(kv.BulkStr(i.Name), kv.Integer(int64(i.Arity)), kv.ArrayOf(kv.Str(flag)),
		kv.Integer(first), kv.Integer(last), kv.Integer(step), kv.ArrayOf(), kv.ArrayOf(), kv.ArrayOf(), kv.ArrayOf())
}

var connFlags = func() map[string]struct{} {
	m := map[string]struct{}{}
	for _, n := range connCommandNames {
		m[n.name] = struct{}{}
	}
	return m
}()

// info answers INFO [section ...]: server, clients, replication (the
// Raft role) and keyspace.
func (c *respConn) info(args [][]byte) kv.Value {
	want := map[string]bool{}
	for _, a := range args[1:] {
		want[strings.ToLower(string(a))] = true
	}
	all := len(want) == 0 || want["all"] || want["default"] || want["everything"]
	var b strings.Builder
	section := func(name string, lines ...string) {
		if !all && !want[name] {
			return
		}
		if b.Len() > 0 {
			b.WriteString("\r\n")
		}
		b.WriteString("# " + strings.ToUpper(name[:1]) + name[1:] + "\r\n")
		for _, l := range lines {
			b.WriteString(l + "\r\n")
		}
	}
	section("server", "redis_version:7.0.0", "redis_mode:standalone", "mcpd_node:"+c.s.node.ID(), "arch_bits:64", "tcp_port:"+portOf(c.nc.LocalAddr().String()))
	c.s.mu.Lock()
	clients := len(c.s.conns)
	c.s.mu.Unlock()
	section("clients", "connected_clients:"+strconv.Itoa(clients), "blocked_clients:"+strconv.FormatInt(c.s.blockedClients.Load(), 10))
	role := "slave"
	if c.s.node.IsLeader() {
		role = "master"
	}
	leader := c.s.node.Leader()
	section("replication", "role:"+role, "raft_leader:"+leader, "raft_state:"+c.s.node.Raft().State().String())
	keys := c.read([][]byte{[]byte("dbsize")}).I
	var ks []string
	if keys > 0 {
		ks = append(ks, fmt.Sprintf("db0:keys=%d,expires=0,avg_ttl=0", keys))
	}
	section("keyspace", ks...)
	return kv.BulkStr(b.String())
}

func portOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[i+1:]
	}
	return addr
}

// errWrongPass is Redis's answer to credentials that do not match.
var errWrongPass = kv.Err("WRONGPASS invalid username-password pair or user is disabled.")

// auth answers AUTH [username] password. The username is an agent, the
// password the Redis token 'mcpd agent add --token' issued it.
func (c *respConn) auth(args [][]byte) kv.Value {
	switch len(args) {
	case 2:
		if c.s.opt.Dev {
			return kv.Err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
		}
		return errWrongPass
	case 3:
		return c.authAs(args[1], args[2])
	}
	return kv.Err("ERR syntax error")
}

// authAs checks an agent's Redis token against its record.
func (c *respConn) authAs(user, pass []byte) kv.Value {
	name := string(user)
	ev := fsm.AuthEventArgs{Kind: "auth.fail", Agent: name, Detail: "redis", Code: "unauthenticated", Remote: c.nc.RemoteAddr().String()}
	if !auth.ValidAgentName(name) {
		ev.Agent = ""
		c.record(ev)
		return errWrongPass
	}
	var rec auth.Agent
	var ok bool
	if err := c.s.node.Read(func(tx *bolt.Tx) (err error) {
		rec, ok, err = auth.GetAgent(tx, name)
		return err
	}); err != nil {
		return kv.Err("TRYAGAIN " + err.Error())
	}
	sum := sha256.Sum256(pass)
	if !ok || !rec.Active() || len(rec.TokenHash) != 32 || subtle.ConstantTimeCompare(sum[:], rec.TokenHash) != 1 {
		c.record(ev)
		return errWrongPass
	}
	c.agent, c.authed = &rec, true
	c.agentName.Store(&rec.Name)
	ev.Kind, ev.Code = "auth.ok", ""
	c.record(ev)
	return kv.OK
}

func (c *respConn) record(ev fsm.AuthEventArgs) {
	if ev.Kind == "auth.fail" {
		countAuthFailure(c.s.node, transportRedis, ev.Code)
	}
	if c.s.opt.Audit != nil {
		ev.Node = c.s.node.ID()
		c.s.opt.Audit(ev)
	}
}

// allowKeys checks an authenticated agent's key grants for a keyspace
// command; dev clients are not restricted.
func (c *respConn) allowKeys(args [][]byte) (kv.Value, bool) {
	if c.agent == nil {
		return kv.Value{}, true
	}
	keys, whole := kv.KeysOf(args)
	if v, ok, done := c.allowQueueKeys(args, keys); done {
		return v, ok
	}
	if whole {
		for _, p := range c.agent.ACL.Keys {
			if p == "*" {
				return kv.Value{}, true
			}
		}
		c.record(fsm.AuthEventArgs{Kind: "denied", Agent: c.agent.Name, Subject: "redis " + strings.ToLower(string(args[0])), Code: "forbidden"})
		return kv.Err("NOPERM this user has no permissions to run the '" + strings.ToLower(string(args[0])) + "' command"), false
	}
	for _, k := range keys {
		if !c.agent.ACL.Allows(auth.OpKeys, string(k)) {
			c.record(fsm.AuthEventArgs{Kind: "denied", Agent: c.agent.Name, Subject: "redis key " + string(k), Code: "forbidden"})
			return kv.Err("NOPERM this user has no permissions to access one of the keys used as arguments"), false
		}
	}
	return kv.Value{}, true
}

// allowQueueKeys checks a command naming queue keys ("mcp:NAME") against
// the agent's queue grants rather than its key grants: XADD needs
// enqueue, XREADGROUP and XACK consume, the other commands (reads, and
// XGROUP CREATE, which makes the queue as an enqueue or consume would)
// either. done is false when the command names no queue key.
func (c *respConn) allowQueueKeys(args [][]byte, keys [][]byte) (v kv.Value, ok, done bool) {
	var queues []string
	for _, k := range keys {
		if q, isQueue := kv.QueueOf(k); isQueue {
			queues = append(queues, q)
		}
	}
	if len(queues) == 0 {
		return kv.Value{}, true, false
	}
	ops := []string{auth.OpEnqueue, auth.OpConsume}
	switch strings.ToLower(string(args[0])) {
	case "xadd":
		ops = ops[:1]
	case "xreadgroup", "xack":
		ops = ops[1:]
	}
	for _, k := range keys {
		q, isQueue := kv.QueueOf(k)
		allowed := false
		for _, op := range ops {
			allowed = allowed || (isQueue && c.agent.ACL.Allows(op, q)) || (!isQueue && c.agent.ACL.Allows(auth.OpKeys, string(k)))
		}
		if !allowed {
			c.record(fsm.AuthEventArgs{Kind: "denied", Agent: c.agent.Name, Subject: "redis key " + string(k), Code: "forbidden"})
			return kv.Err("NOPERM this user has no permissions to access one of the keys used as arguments"), false, true
		}
	}
	return kv.Value{}, true, true
}
