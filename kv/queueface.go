package kv

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// The queue face: every broker queue is a Redis stream under the key
// "mcp:" + its name, with one consumer group, "mcp", which the WebSocket
// consumers of the queue are part of (docs/redis.md). XADD enqueues,
// XREADGROUP leases, XACK acknowledges; XLEN, XRANGE, XREVRANGE, XREAD,
// XPENDING and XINFO read the queue; TYPE and EXISTS see it. Other
// commands are refused on such keys, so a queue is never overwritten,
// deleted or expired through Redis. Entry ids are the message's enqueue
// time and its sequence number in the queue ("ms-seq"), increasing with
// the sequence because the FSM's time never goes back.

// QueuePrefix begins every key that names a broker queue.
const QueuePrefix = "mcp:"

// QueueGroup is the one consumer group of a queue's stream.
const QueueGroup = "mcp"

// QueueLeaseMs is how long a message XREADGROUP gives a Redis consumer
// stays leased to it: unacknowledged by then, it is a failed attempt and
// goes back to the queue (after its backoff) for any consumer. A
// constant of the replicated state machine.
const QueueLeaseMs = 30_000

// maxQueuePull bounds the messages one XREADGROUP leases (COUNT 0 or
// none asks for every ready message in Redis).
const maxQueuePull = queue.MaxPrefetch

// redisHolder is the lease holder of a Redis consumer.
const redisHolder = "redis:"

// QueueEnv is the envelope the proposing node made for an XADD to a
// queue: the FSM cannot draw the envelope's id nor read its clock.
type QueueEnv struct {
	Env  []byte
	From string
	ID   string
	Hash [32]byte
}

// queueCommands are the commands a queue key accepts.
var queueCommands = map[string]bool{
	"type": true, "exists": true, "xadd": true, "xlen": true, "xrange": true, "xrevrange": true, "xread": true,
	"xreadgroup": true, "xack": true, "xpending": true, "xinfo": true, "xgroup": true,
}

// QueueOf returns the queue a key names, if it is a queue key.
func QueueOf(key []byte) (string, bool) {
	if !bytes.HasPrefix(key, []byte(QueuePrefix)) {
		return "", false
	}
	return string(key[len(QueuePrefix):]), true
}

// QueueKey is the key of a queue.
func QueueKey(name string) []byte { return []byte(QueuePrefix + name) }

// NamesQueue reports whether a command names a queue key (args must have
// passed Check).
func NamesQueue(args [][]byte) bool {
	keys, _ := KeysOf(args)
	for _, k := range keys {
		if _, ok := QueueOf(k); ok {
			return true
		}
	}
	return false
}

// ExecFace runs a command on the keyspace or, when it names a queue key,
// on the queue: a write with qt (the command's queue transaction), a
// read with qt nil. env is an XADD's envelope.
func ExecFace(tx *bolt.Tx, qt *queue.Tx, now int64, args [][]byte, write bool, env *QueueEnv) Value {
	if v, ok := Check(args); !ok {
		return v
	}
	if !NamesQueue(args) {
		return Exec(tx, now, args, write)
	}
	name := strings.ToLower(string(args[0]))
	keys, _ := KeysOf(args)
	if !queueCommands[name] {
		return Err("ERR " + strings.ToUpper(name) + " does not apply to an mcpd queue (the 'mcp:' keys, docs/redis.md)")
	}
	if name == "exists" {
		var n int64
		for _, k := range keys {
			if q, ok := QueueOf(k); ok {
				if queue.Exists(tx, q) {
					n++
				}
			} else if Exec(tx, now, [][]byte{[]byte("exists"), k}, false).I == 1 {
				n++
			}
		}
		return Integer(n)
	}
	if len(keys) != 1 {
		return Err("ERR an mcpd queue is read alone: name one stream per XREAD or XREADGROUP")
	}
	q, _ := QueueOf(keys[0])
	if !validQueue(q) {
		return Err("ERR '" + string(cut128(keys[0])) + "' names no mcpd queue: a queue name is 1-200 bytes of [A-Za-z0-9._-]")
	}
	f := &face{tx: tx, qt: qt, now: now, name: q, key: keys[0]}
	if f.exists = queue.Exists(tx, q); f.exists {
		n, err := queue.LastSeq(tx, q)
		if err != nil {
			return Err("ERR " + err.Error())
		}
		f.lastSeq = n
	}
	var v Value
	err := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				qe, ok := r.(queueErr)
				if !ok {
					panic(r)
				}
				err = qe.err
			}
		}()
		v = f.run(name, args, env)
		return nil
	}()
	if err != nil {
		if errors.Is(err, queue.ErrFull) {
			return Err("ERR the mcpd queue is full (its max_len)")
		}
		// Anything else is a store failure: the FSM stops the replica.
		panic(err)
	}
	return v
}

// validQueue reports whether a queue may be reached through its key:
// agent inboxes ("@NAME") are not.
func validQueue(q string) bool { return auth.ValidQueueName(q) && !auth.IsInbox(q) }

// queueErr carries a queue error out of a face command.
type queueErr struct{ err error }

func qmust[T any](v T, err error) T {
	if err != nil {
		panic(queueErr{err})
	}
	return v
}

// face is one command on a queue.
type face struct {
	tx      *bolt.Tx
	qt      *queue.Tx
	now     int64
	name    string
	key     []byte
	exists  bool
	lastSeq uint64
}

func (f *face) run(name string, a [][]byte, env *QueueEnv) Value {
	switch name {
	case "type":
		if f.exists {
			return Str("stream")
		}
		return Str("none")
	case "xadd":
		return f.xadd(a, env)
	case "xlen":
		info := qmust(queue.ReadInfo(f.tx, f.name))
		return Integer(info.Ready + info.Delayed + info.Inflight)
	case "xrange", "xrevrange":
		return f.xrange(a, name == "xrevrange")
	case "xread":
		return f.xread(a)
	case "xreadgroup":
		return f.xreadgroup(a)
	case "xack":
		return f.xack(a)
	case "xpending":
		return f.xpending(a)
	case "xinfo":
		return f.xinfo(a)
	case "xgroup":
		return f.xgroup(a)
	}
	return Err("ERR internal: no queue form of " + name)
}

func (f *face) each(rev bool, fn func(queue.Message) bool) {
	if f.exists {
		qmust(0, queue.ReadMessages(f.tx, f.name, rev, fn))
	}
}

func msgID(m queue.Message) streamID { return streamID{uint64(m.Enqueued), m.Seq} }

// entry is a message as a stream entry: [id, fields].
func entryOf(m queue.Message) Value {
	return ArrayOf(BulkStr(msgID(m).String()), ArrayOf(EnvFields(m.Env)...))
}

// EnvFields are the fields of a message's stream entry: the members of
// its envelope's body when that is an object of strings (what XADD
// makes), otherwise one field "body" with the body's JSON.
func EnvFields(env []byte) []Value {
	var e struct {
		Body json.RawMessage `json:"body"`
	}
	if json.Unmarshal(env, &e) != nil || len(e.Body) == 0 {
		return []Value{BulkStr("body"), BulkStr("null")}
	}
	if fields, ok := stringMembers(e.Body); ok && len(fields) > 0 {
		return fields
	}
	var buf bytes.Buffer
	if json.Compact(&buf, e.Body) != nil {
		return []Value{BulkStr("body"), BulkOf(bytes.Clone(e.Body))}
	}
	return []Value{BulkStr("body"), BulkOf(buf.Bytes())}
}

// stringMembers returns an object's names and values in order when every
// value is a string.
func stringMembers(raw []byte) ([]Value, bool) {
	d := json.NewDecoder(bytes.NewReader(raw))
	if t, err := d.Token(); err != nil || t != json.Delim('{') {
		return nil, false
	}
	var out []Value
	for d.More() {
		k, err := d.Token()
		if err != nil {
			return nil, false
		}
		v, err := d.Token()
		if err != nil {
			return nil, false
		}
		vs, ok := v.(string)
		if !ok {
			return nil, false
		}
		out = append(out, BulkStr(k.(string)), BulkStr(vs))
	}
	return out, true
}

// QueueBody is the body of the envelope an XADD of these field value
// pairs enqueues: a JSON object of them, in order. Fields and values
// must be UTF-8 text and field names distinct, or the reply is the
// error.
func QueueBody(fv [][]byte) (json.RawMessage, *Value) {
	seen := map[string]bool{}
	var b bytes.Buffer
	b.WriteByte('{')
	for i := 0; i < len(fv); i += 2 {
		if !utf8.Valid(fv[i]) || !utf8.Valid(fv[i+1]) {
			v := Err("ERR an mcpd queue entry is JSON: its fields and values must be UTF-8 text")
			return nil, &v
		}
		if seen[string(fv[i])] {
			v := Err("ERR an mcpd queue entry names each field once")
			return nil, &v
		}
		seen[string(fv[i])] = true
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(string(fv[i]))
		v, _ := json.Marshal(string(fv[i+1]))
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// XAddQueue checks an XADD to a queue before the node makes its
// envelope: it returns the field value pairs, whether NOMKSTREAM was
// given, or the error reply.
func XAddQueue(a [][]byte) (fv [][]byte, noMk bool, bad *Value) {
	fail := func(v Value) ([][]byte, bool, *Value) { return nil, false, &v }
	i := 2
	for ; i < len(a); i++ {
		switch {
		case isOpt(a[i], "nomkstream"):
			noMk = true
			continue
		case isOpt(a[i], "maxlen"), isOpt(a[i], "minid"), isOpt(a[i], "limit"):
			return fail(Err("ERR XADD does not trim an mcpd queue: its max_len setting bounds it"))
		case string(a[i]) != "*":
			return fail(Err("ERR an mcpd queue gives its messages their ids: XADD takes *"))
		}
		break
	}
	fv = a[min(i+1, len(a)):]
	if len(fv) < 2 || len(fv)%2 == 1 {
		return fail(ErrArity("xadd"))
	}
	if _, bad := QueueBody(fv); bad != nil {
		return nil, false, bad
	}
	return fv, noMk, nil
}

func (f *face) xadd(a [][]byte, env *QueueEnv) Value {
	_, noMk, bad := XAddQueue(a)
	if bad != nil {
		return *bad
	}
	if noMk && !f.exists {
		return NilBulk
	}
	if env == nil || f.qt == nil {
		return Err("ERR internal: XADD to an mcpd queue without its envelope")
	}
	res := qmust(f.qt.Enqueue(queue.EnqueueArgs{Queue: f.name, From: env.From, ID: env.ID, Hash: env.Hash, Env: env.Env}))
	return BulkStr(streamID{uint64(f.now), res.Seq}.String())
}

// rangeBounds reads XRANGE's bounds and COUNT (-1: none).
func rangeBounds(a [][]byte, rev bool) (start, end streamID, count int64, bad *Value) {
	fail := func(v Value) (streamID, streamID, int64, *Value) { return streamID{}, streamID{}, 0, &v }
	startArg, endArg := a[2], a[3]
	if rev {
		startArg, endArg = endArg, startArg
	}
	start, excl, ok := parseRangeID(startArg, 0)
	if !ok {
		return fail(errStreamID)
	}
	if excl {
		if start, ok = start.incr(); !ok {
			return fail(Err("ERR invalid start ID for the interval"))
		}
	}
	end, excl, ok = parseRangeID(endArg, ^uint64(0))
	if !ok {
		return fail(errStreamID)
	}
	if excl {
		if end, ok = end.decr(); !ok {
			return fail(Err("ERR invalid end ID for the interval"))
		}
	}
	count = -1
	for j := 4; j < len(a); j++ {
		if !isOpt(a[j], "count") || j+1 >= len(a) {
			return fail(errSyntax)
		}
		n, ok := parseInt(a[j+1])
		if !ok {
			return fail(errNotInt)
		}
		count = max(n, 0)
		j++
	}
	return start, end, count, nil
}

func (f *face) xrange(a [][]byte, rev bool) Value {
	start, end, count, bad := rangeBounds(a, rev)
	if bad != nil {
		return *bad
	}
	if count == 0 && f.exists {
		return Value{K: NullArray}
	}
	out := []Value{}
	f.each(rev, func(m queue.Message) bool {
		id := msgID(m)
		if (rev && id.cmp(start) < 0) || (!rev && id.cmp(end) > 0) {
			return false
		}
		if id.cmp(start) >= 0 && id.cmp(end) <= 0 {
			out = append(out, entryOf(m))
		}
		return count < 0 || int64(len(out)) < count
	})
	return ArrayOf(out...)
}

// after returns the queue's messages with ids past id, at most count (0:
// no limit).
func (f *face) after(id streamID, count int64) []Value {
	out := []Value{}
	f.each(false, func(m queue.Message) bool {
		if msgID(m).cmp(id) > 0 {
			out = append(out, entryOf(m))
		}
		return count == 0 || int64(len(out)) < count
	})
	return out
}

func (f *face) lastID() streamID {
	var last streamID
	f.each(true, func(m queue.Message) bool { last = msgID(m); return false })
	return last
}

func (f *face) xread(a [][]byte) Value {
	p, bad := parseReadGroup(a, false)
	if bad != nil {
		return *bad
	}
	var after streamID
	switch arg := a[len(a)-1]; string(cstr(arg)) {
	case "$":
		after = f.lastID()
	case ">":
		return Err("ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.")
	default:
		id, _, ok := parseStreamID(arg, 0, true, false)
		if !ok {
			return errStreamID
		}
		after = id
	}
	if entries := f.after(after, p.count); len(entries) > 0 {
		return Value{K: PairMap, A: []Value{BulkOf(bytes.Clone(f.key)), ArrayOf(entries...)}}
	}
	if p.block {
		return errXReadBlock
	}
	return Value{K: NullArray}
}

// validConsumer reports whether a Redis consumer name can hold leases:
// UTF-8 text without NUL, at most 512 bytes.
func validConsumer(c []byte) bool {
	return len(c) > 0 && len(c) <= 512 && utf8.Valid(c) && bytes.IndexByte(c, 0) < 0
}

func (f *face) noGroup(group []byte) Value {
	return Err("NOGROUP No such key '" + string(cstr(f.key)) + "' or consumer group '" + string(cstr(group)) + "' in XREADGROUP with GROUP option")
}

func (f *face) xreadgroup(a [][]byte) Value {
	p, bad := parseReadGroup(a, true)
	if bad != nil {
		return *bad
	}
	if !f.exists || string(p.group) != QueueGroup {
		return f.noGroup(p.group)
	}
	var history bool
	var after streamID
	switch arg := a[len(a)-1]; string(cstr(arg)) {
	case "$":
		return Err("ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just return an empty result set.")
	case ">":
	default:
		id, _, ok := parseStreamID(arg, 0, true, false)
		if !ok {
			return errStreamID
		}
		history, after = true, id
	}
	if !validConsumer(p.consumer) {
		return Err("ERR a consumer of an mcpd queue is named by 1-512 bytes of UTF-8 text without NUL")
	}
	holder := redisHolder + string(p.consumer)
	out := []Value{}
	if history {
		qmust(0, queue.ReadHeld(f.tx, holder, f.name, func(m queue.Message) bool {
			if msgID(m).cmp(after) > 0 {
				out = append(out, entryOf(m))
			}
			return p.count == 0 || int64(len(out)) < p.count
		}))
		return Value{K: PairMap, A: []Value{BulkOf(bytes.Clone(f.key)), ArrayOf(out...)}}
	}
	n := maxQueuePull
	if p.count > 0 && p.count < int64(n) {
		n = int(p.count)
	}
	for _, m := range qmust(f.qt.Pull(f.name, holder, n, QueueLeaseMs)) {
		out = append(out, entryOf(m))
		if p.noAck {
			qmust(f.qt.AckHeld(f.name, m.Seq, m.Enqueued, holder))
		}
	}
	if len(out) > 0 {
		return Value{K: PairMap, A: []Value{BulkOf(bytes.Clone(f.key)), ArrayOf(out...)}}
	}
	if p.block {
		return errXReadBlock
	}
	return Value{K: NullArray}
}

func (f *face) xack(a [][]byte) Value {
	if !f.exists || string(a[2]) != QueueGroup {
		return Integer(0)
	}
	ids, ok := parseIDs(a[3:])
	if !ok {
		return errStreamID
	}
	var n int64
	for _, id := range ids {
		if id.ms > 1<<62 {
			continue
		}
		if qmust(f.qt.AckHeld(f.name, id.seq, int64(id.ms), redisHolder)) {
			n++
		}
	}
	return Integer(n)
}

// holderName is a lease holder as XPENDING and XINFO name the consumer:
// a Redis consumer's name, or "ws:" and a WebSocket connection's id.
func holderName(conn string) []byte {
	if name, ok := strings.CutPrefix(conn, redisHolder); ok {
		return []byte(name)
	}
	return []byte("ws:" + conn)
}

func (f *face) inflight(fn func(m queue.Message) bool) {
	f.each(false, func(m queue.Message) bool {
		if m.State != queue.StateInflight {
			return true
		}
		return fn(m)
	})
}

func (f *face) xpending(a [][]byte) Value {
	p, bad := parsePending(a)
	if bad != nil {
		return *bad
	}
	if !f.exists || string(a[2]) != QueueGroup {
		return errNoKeyOrGroup(f.key, a[2])
	}
	if p.summary {
		var n int64
		var first, last streamID
		counts := map[string]int64{}
		var names []string
		f.inflight(func(m queue.Message) bool {
			if n == 0 {
				first = msgID(m)
			}
			last = msgID(m)
			n++
			h := string(holderName(m.Conn))
			if counts[h] == 0 {
				names = append(names, h)
			}
			counts[h]++
			return true
		})
		if n == 0 {
			return ArrayOf(Integer(0), NilBulk, NilBulk, Value{K: NullArray})
		}
		slices.Sort(names)
		cs := make([]Value, len(names))
		for i, h := range names {
			cs[i] = ArrayOf(BulkStr(h), BulkStr(strconv.FormatInt(counts[h], 10)))
		}
		return ArrayOf(Integer(n), BulkStr(first.String()), BulkStr(last.String()), ArrayOf(cs...))
	}
	out := []Value{}
	count := p.count
	f.inflight(func(m queue.Message) bool {
		id := msgID(m)
		if count == 0 || id.cmp(p.end) > 0 {
			return false
		}
		h := holderName(m.Conn)
		if id.cmp(p.start) < 0 || (p.consumer != nil && !bytes.Equal(h, p.consumer)) {
			return true
		}
		idle := max(f.now-m.LeasedAt, 0)
		if p.idle != 0 && f.now-m.LeasedAt < p.idle {
			return true
		}
		out = append(out, ArrayOf(BulkStr(id.String()), BulkOf(h), Integer(idle), Integer(int64(m.Attempts))))
		count--
		return true
	})
	return ArrayOf(out...)
}

func (f *face) xinfo(a [][]byte) Value {
	if !f.exists {
		return errNoSuchKey
	}
	var length, ready, inflight int64
	var first, last Value = NilBulk, NilBulk
	f.each(false, func(m queue.Message) bool {
		length++
		if m.State == queue.StateReady {
			ready++
		}
		if m.State == queue.StateInflight {
			inflight++
		}
		if length == 1 {
			first = entryOf(m)
		}
		last = entryOf(m)
		return true
	})
	switch strings.ToLower(string(a[1])) {
	case "groups":
		consumers := int64(len(f.consumers()))
		return ArrayOf(mapOf("name", BulkStr(QueueGroup), "consumers", Integer(consumers), "pending", Integer(inflight),
			"last-delivered-id", BulkStr("0-0"), "entries-read", NilBulk, "lag", Integer(ready)))
	case "consumers":
		if string(a[3]) != QueueGroup {
			return errNoGroup(f.key, a[3])
		}
		out := []Value{}
		for _, c := range f.consumers() {
			out = append(out, mapOf("name", BulkStr(c.name), "pending", Integer(c.pending), "idle", Integer(max(f.now-c.last, 0))))
		}
		return ArrayOf(out...)
	}
	if len(a) > 3 {
		return Err("ERR XINFO STREAM FULL does not apply to an mcpd queue")
	}
	firstID, lastID := "0-0", "0-0"
	if first.K == Array {
		firstID, lastID = string(first.A[0].S), string(last.A[0].S)
	}
	keys := (length + 99) / 100
	return mapOf("length", Integer(length), "radix-tree-keys", Integer(keys), "radix-tree-nodes", Integer(keys+1),
		"last-generated-id", BulkStr(lastID), "max-deleted-entry-id", BulkStr("0-0"), "entries-added", Integer(int64(f.lastSeq)),
		"recorded-first-entry-id", BulkStr(firstID), "groups", Integer(1), "first-entry", first, "last-entry", last)
}

type holderInfo struct {
	name    string
	pending int64
	last    int64 // latest lease start
}

// consumers lists the holders of the queue's leases in name order.
func (f *face) consumers() []holderInfo {
	byName := map[string]*holderInfo{}
	var names []string
	f.inflight(func(m queue.Message) bool {
		h := string(holderName(m.Conn))
		c := byName[h]
		if c == nil {
			c = &holderInfo{name: h}
			byName[h] = c
			names = append(names, h)
		}
		c.pending++
		c.last = max(c.last, m.LeasedAt)
		return true
	})
	slices.Sort(names)
	out := make([]holderInfo, len(names))
	for i, n := range names {
		out[i] = *byName[n]
	}
	return out
}

func (f *face) xgroup(a [][]byte) Value {
	sub := strings.ToLower(string(a[1]))
	if sub != "create" {
		return Err("ERR XGROUP " + strings.ToUpper(sub) + " does not apply to an mcpd queue: its one group is mcp")
	}
	mkstream := false
	for _, opt := range a[5:] {
		if !isOpt(opt, "mkstream") {
			return subSyntaxErr(a)
		}
		mkstream = true
	}
	if string(a[3]) != QueueGroup {
		return Err("ERR an mcpd queue has one consumer group, mcp")
	}
	if f.exists {
		return Err("BUSYGROUP Consumer Group name already exists")
	}
	if !mkstream {
		return errKeyForGroup
	}
	if f.qt == nil {
		return Err("ERR internal: XGROUP CREATE on a read path")
	}
	qmust(f.qt.Create(f.name))
	return OK
}
