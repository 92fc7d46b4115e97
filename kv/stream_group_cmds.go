package kv

import (
	"bytes"
	"math"
	"slices"
	"strconv"
	"strings"
)

// The consumer group commands: XGROUP, XREADGROUP, XACK, XPENDING,
// XCLAIM, XAUTOCLAIM, XINFO, and XSETID. Times (delivery, seen) are the
// command's stamped time; idle times count from the node's clock.

func init() {
	commands["xgroup"] = spec{-2, true, cmdXGroup}
	commands["xreadgroup"] = spec{-7, true, cmdXReadGroup}
	commands["xack"] = spec{-4, true, cmdXAck}
	commands["xpending"] = spec{-3, false, cmdXPending}
	commands["xclaim"] = spec{-6, true, cmdXClaim}
	commands["xautoclaim"] = spec{-6, true, cmdXAutoClaim}
	commands["xinfo"] = spec{-2, false, cmdXInfo}
	commands["xsetid"] = spec{-3, true, cmdXSetID}
	subcommands["xgroup"] = map[string]int{"create": -5, "setid": -5, "destroy": 4, "createconsumer": 5, "delconsumer": 5}
	subcommands["xinfo"] = map[string]int{"stream": -3, "groups": 3, "consumers": 4}
}

// subcommands are the arities of container commands' subcommands.
var subcommands = map[string]map[string]int{}

// checkSub answers a container command whose subcommand is unknown or
// has the wrong number of arguments, as Redis does before running it.
func checkSub(name string, args [][]byte) (Value, bool) {
	subs, ok := subcommands[name]
	if !ok {
		return Value{}, true
	}
	sub := strings.ToLower(string(args[1]))
	arity, ok := subs[sub]
	if !ok {
		return Err("ERR unknown subcommand '" + string(cut128(args[1])) + "'. Try " + strings.ToUpper(string(args[0])) + " HELP."), false
	}
	if (arity > 0 && len(args) != arity) || (arity < 0 && len(args) < -arity) {
		return ErrArity(name + "|" + sub), false
	}
	return Value{}, true
}

// cut128 is an argument as Redis quotes it in a message: up to its first
// NUL byte, at most 128 bytes, CR and LF as spaces.
func cut128(b []byte) []byte {
	b = bytes.Clone(cstr(b))
	b = b[:min(len(b), 128)]
	for i, c := range b {
		if c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return b
}

func subSyntaxErr(args [][]byte) Value {
	return Err("ERR unknown subcommand or wrong number of arguments for '" + string(cut128(args[1])) + "'. Try " + strings.ToUpper(string(args[0])) + " HELP.")
}

var (
	errKeyForGroup = Err("ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically.")
	errNoSuchKey   = Err("ERR no such key")
)

func errNoGroup(key, group []byte) Value {
	return Err("NOGROUP No such consumer group '" + string(cstr(group)) + "' for key name '" + string(cstr(key)) + "'")
}

func errNoKeyOrGroup(key, group []byte) Value {
	return Err("NOGROUP No such key '" + string(cstr(key)) + "' or consumer group '" + string(cstr(group)) + "'")
}

// cmdXGroup: XGROUP CREATE key group id|$ [MKSTREAM] [ENTRIESREAD n],
// SETID key group id|$ [ENTRIESREAD n], DESTROY key group,
// CREATECONSUMER key group consumer, DELCONSUMER key group consumer.
func cmdXGroup(c *ctx, a [][]byte) Value {
	sub := strings.ToLower(string(a[1]))
	mkstream := false
	read := int64(invalidRead)
	if sub == "create" || sub == "setid" {
		for i := 5; i < len(a); {
			switch {
			case sub == "create" && isOpt(a[i], "mkstream"):
				mkstream = true
				i++
			case isOpt(a[i], "entriesread") && i+1 < len(a):
				n, ok := parseInt(a[i+1])
				if !ok {
					return errNotInt
				}
				if n < 0 && n != invalidRead {
					return Err("ERR value for ENTRIESREAD must be positive or -1")
				}
				read = n
				i += 2
			default:
				return subSyntaxErr(a)
			}
		}
	}
	s, wrong := c.openStream(a[2], false)
	if wrong {
		return errWrongType
	}
	var g *group
	if !mkstream {
		if s == nil {
			return errKeyForGroup
		}
		if g = s.group(a[3]); g == nil && (sub == "setid" || sub == "createconsumer" || sub == "delconsumer") {
			return errNoGroup(a[2], a[3])
		}
	}
	switch {
	case sub == "create" && len(a) <= 8:
		var id streamID
		if string(cstr(a[4])) == "$" {
			if s != nil {
				id = s.last
			}
		} else {
			var ok bool
			if id, _, ok = parseStreamID(a[4], 0, true, false); !ok {
				return errStreamID
			}
		}
		checkGroupKey(a[2], a[3], nil)
		if s == nil {
			s, _ = c.openStream(a[2], true)
			s.save()
		}
		if !s.createGroup(a[3], id, read) {
			return Err("BUSYGROUP Consumer Group name already exists")
		}
		return OK
	case sub == "setid" && (len(a) == 5 || len(a) == 7):
		id := s.last
		if string(cstr(a[4])) != "$" {
			var ok bool
			if id, _, ok = parseStreamID(a[4], 0, false, false); !ok {
				return errStreamID
			}
		}
		g.last, g.read = id, read
		g.save()
		return OK
	case sub == "destroy":
		if g == nil {
			return Integer(0)
		}
		g.destroy()
		return Integer(1)
	case sub == "createconsumer":
		created := g.createConsumer(a[4])
		if created {
			g.save()
			return Integer(1)
		}
		return Integer(0)
	case sub == "delconsumer":
		n := g.deleteConsumer(a[4])
		g.save()
		return Integer(n)
	}
	return subSyntaxErr(a)
}

// readGroupArgs are XREADGROUP's arguments.
type readGroupArgs struct {
	group, consumer []byte
	count           int64
	block           bool
	blockMs         int64
	blockAt         []int // the positions of BLOCK options
	noAck           bool
	keys            [][]byte
	ids             []streamID // maxStreamID for ">"
}

// parseReadGroup reads XREAD's or XREADGROUP's options, in Redis's order
// of checks; on an error it returns the reply.
func parseReadGroup(a [][]byte, readGroup bool) (readGroupArgs, *Value) {
	var p readGroupArgs
	fail := func(v Value) (readGroupArgs, *Value) { return readGroupArgs{}, &v }
	streamsAt := 0
	for i := 1; i < len(a) && streamsAt == 0; i++ {
		more := len(a) - i - 1
		switch {
		case isOpt(a[i], "block") && more > 0:
			i++
			n, ok := parseInt(a[i])
			if !ok {
				return fail(Err("ERR timeout is not an integer or out of range"))
			}
			if n < 0 {
				return fail(Err("ERR timeout is negative"))
			}
			p.block, p.blockMs, p.blockAt = true, n, append(p.blockAt, i-1)
		case isOpt(a[i], "count") && more > 0:
			i++
			n, ok := parseInt(a[i])
			if !ok {
				return fail(errNotInt)
			}
			p.count = max(n, 0)
		case isOpt(a[i], "streams") && more > 0:
			streamsAt = i + 1
			if (len(a)-streamsAt)%2 != 0 {
				return fail(errXReadBalance)
			}
		case isOpt(a[i], "group") && more >= 2:
			if !readGroup {
				return fail(Err("ERR The GROUP option is only supported by XREADGROUP. You called XREAD instead."))
			}
			p.group, p.consumer = a[i+1], a[i+2]
			i += 2
		case isOpt(a[i], "noack"):
			if !readGroup {
				return fail(Err("ERR The NOACK option is only supported by XREADGROUP. You called XREAD instead."))
			}
			p.noAck = true
		default:
			return fail(errSyntax)
		}
	}
	if streamsAt == 0 {
		return fail(errSyntax)
	}
	if readGroup && p.group == nil {
		return fail(Err("ERR Missing GROUP option for XREADGROUP"))
	}
	n := (len(a) - streamsAt) / 2
	p.keys = a[streamsAt : streamsAt+n]
	p.ids = make([]streamID, n)
	return p, nil
}

// ReadBlock returns, for an XREAD or XREADGROUP with a valid BLOCK
// option, the command without it, the keys it reads, and the BLOCK time
// in milliseconds (0: forever). block is false for any other command, or
// one that does not parse: it runs as it is, and answers its error.
func ReadBlock(args [][]byte) (inner, keys [][]byte, ms int64, block bool) {
	name := strings.ToLower(string(args[0]))
	if name != "xread" && name != "xreadgroup" {
		return nil, nil, 0, false
	}
	p, bad := parseReadGroup(args, name == "xreadgroup")
	if bad != nil || !p.block {
		return nil, nil, 0, false
	}
	for i, a := range args {
		if slices.Contains(p.blockAt, i) || slices.Contains(p.blockAt, i-1) {
			continue
		}
		inner = append(inner, bytes.Clone(a))
	}
	return inner, p.keys, p.blockMs, true
}

// cmdXReadGroup: XREADGROUP GROUP group consumer [COUNT n] [BLOCK ms]
// [NOACK] STREAMS key [key ...] id [id ...]. With BLOCK and nothing new
// it answers errXReadBlock, and the transport waits.
func cmdXReadGroup(c *ctx, a [][]byte) Value {
	p, bad := parseReadGroup(a, true)
	if bad != nil {
		return *bad
	}
	n := len(p.keys)
	streams, groups := make([]*stream, n), make([]*group, n)
	for i, key := range p.keys {
		s, wrong := c.openStream(key, false)
		if wrong {
			return errWrongType
		}
		if s != nil {
			groups[i] = s.group(p.group)
		}
		if groups[i] == nil {
			return Err("NOGROUP No such key '" + string(cstr(key)) + "' or consumer group '" + string(cstr(p.group)) + "' in XREADGROUP with GROUP option")
		}
		streams[i] = s
		switch arg := a[len(a)-n+i]; string(cstr(arg)) {
		case "$":
			return Err("ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just return an empty result set.")
		case ">":
			p.ids[i] = maxStreamID
		default:
			id, _, ok := parseStreamID(arg, 0, true, false)
			if !ok {
				return errStreamID
			}
			p.ids[i] = id
		}
	}
	for i := range p.keys {
		checkGroupKey(p.keys[i], p.group, p.consumer)
	}
	out := Value{K: PairMap, A: []Value{}}
	for i, s := range streams {
		g := groups[i]
		history := p.ids[i] != maxStreamID
		after := p.ids[i]
		if !history {
			if s.length == 0 || s.lastEntry().cmp(g.last) <= 0 {
				continue
			}
			after = g.last
		}
		g.seen(p.consumer)
		var entries []Value
		if history {
			entries = g.readHistory(p.consumer, after, p.count)
		} else {
			entries = g.readNew(p.consumer, after, p.count, p.noAck)
		}
		g.save()
		out.A = append(out.A, BulkOf(bytes.Clone(p.keys[i])), ArrayOf(entries...))
	}
	if len(out.A) > 0 {
		return out
	}
	if p.block {
		return errXReadBlock
	}
	return Value{K: NullArray}
}

// lastEntry is the id of the stream's newest entry (0-0 when empty): the
// last id may be past it after XDEL or XSETID.
func (s *stream) lastEntry() streamID {
	if s.length == 0 {
		return streamID{}
	}
	cur := s.b.Cursor()
	k, _ := cur.Seek(s.entryKey(maxStreamID))
	if k == nil || !bytes.Equal(k, s.entryKey(maxStreamID)) {
		k, _ = cur.Prev()
	}
	if k == nil || !bytes.HasPrefix(k, s.prefix) {
		return streamID{}
	}
	return readID(k[len(s.prefix):])
}

// readNew delivers the entries after id to a consumer: the group moves
// past them and, unless noAck, they enter the PELs (an entry pending
// elsewhere, after XGROUP SETID, moves to this consumer).
func (g *group) readNew(name []byte, after streamID, count int64, noAck bool) []Value {
	from, ok := after.incr()
	if !ok {
		return nil
	}
	entries := g.s.rangeOf(from, maxStreamID, count, false)
	for _, e := range entries {
		id, _, _ := parseStreamID(e.A[0].S, 0, true, false)
		g.advance(id)
		if noAck {
			continue
		}
		old, had := g.nackOf(id)
		g.setNack(id, nack{consumer: name, time: g.s.c.now, count: 1}, old, had)
	}
	return entries
}

// readHistory answers the consumer's pending entries after id, counting
// a delivery of each; an entry deleted from the stream comes with null
// fields.
func (g *group) readHistory(name []byte, after streamID, count int64) []Value {
	from, ok := after.incr()
	if !ok {
		return []Value{}
	}
	type pending struct {
		id streamID
		n  nack
	}
	var ps []pending
	g.pelFrom(name, from, func(id streamID, n nack) bool {
		if count > 0 && int64(len(ps)) >= count {
			return false
		}
		ps = append(ps, pending{id, n})
		return true
	})
	out := []Value{}
	for _, p := range ps {
		fields, ok := g.s.entry(p.id)
		if !ok {
			out = append(out, ArrayOf(BulkStr(p.id.String()), Value{K: NullArray}))
			continue
		}
		p.n.time, p.n.count = g.s.c.now, p.n.count+1
		g.setNack(p.id, p.n, p.n, true)
		out = append(out, entryValue(p.id, fields))
	}
	return out
}

// cmdXAck: XACK key group id [id ...].
func cmdXAck(c *ctx, a [][]byte) Value {
	_, g, wrong := c.openGroup(a[1], a[2])
	if wrong {
		return errWrongType
	}
	if g == nil {
		return Integer(0)
	}
	ids, ok := parseIDs(a[3:])
	if !ok {
		return errStreamID
	}
	var n int64
	for _, id := range ids {
		if old, had := g.nackOf(id); had {
			g.delNack(id, old)
			n++
		}
	}
	if n > 0 {
		g.save()
	}
	return Integer(n)
}

// pendingArgs are XPENDING's arguments after key and group; summary
// is the short form.
type pendingArgs struct {
	summary     bool
	start, end  streamID
	count, idle int64
	consumer    []byte // nil: every consumer
}

// parsePending reads XPENDING's arguments in Redis's order of checks; on
// an error it returns the reply.
func parsePending(a [][]byte) (pendingArgs, *Value) {
	fail := func(v Value) (pendingArgs, *Value) { return pendingArgs{}, &v }
	if len(a) != 3 && (len(a) < 6 || len(a) > 9) {
		return fail(errSyntax)
	}
	p := pendingArgs{summary: len(a) == 3}
	if p.summary {
		return p, nil
	}
	at := 3
	if isOpt(a[3], "idle") {
		n, ok := parseInt(a[4])
		if !ok {
			return fail(errNotInt)
		}
		p.idle = n
		if len(a) < 8 {
			return fail(errSyntax)
		}
		at += 2
	}
	n, ok := parseInt(a[at+2])
	if !ok {
		return fail(errNotInt)
	}
	p.count = max(n, 0)
	var excl bool
	if p.start, excl, ok = parseRangeID(a[at], 0); !ok {
		return fail(errStreamID)
	}
	if excl {
		if p.start, ok = p.start.incr(); !ok {
			return fail(Err("ERR invalid start ID for the interval"))
		}
	}
	if p.end, excl, ok = parseRangeID(a[at+1], math.MaxUint64); !ok {
		return fail(errStreamID)
	}
	if excl {
		if p.end, ok = p.end.decr(); !ok {
			return fail(Err("ERR invalid end ID for the interval"))
		}
	}
	if at+3 < len(a) {
		p.consumer = a[at+3]
	}
	return p, nil
}

// cmdXPending: XPENDING key group [[IDLE ms] start end count [consumer]].
func cmdXPending(c *ctx, a [][]byte) Value {
	p, bad := parsePending(a)
	if bad != nil {
		return *bad
	}
	start, end, count, minIdle, name := p.start, p.end, p.count, p.idle, p.consumer
	_, g, wrong := c.openGroup(a[1], a[2])
	if wrong {
		return errWrongType
	}
	if g == nil {
		return errNoKeyOrGroup(a[1], a[2])
	}
	if len(a) == 3 {
		return g.pendingSummary()
	}
	out := []Value{}
	if name != nil {
		if _, ok := g.consumerOf(name); !ok {
			return ArrayOf()
		}
	}
	g.pelFrom(name, start, func(id streamID, n nack) bool {
		if count == 0 || id.cmp(end) > 0 {
			return false
		}
		idle := max(c.now-n.time, 0)
		if minIdle != 0 && c.now-n.time < minIdle {
			return true
		}
		out = append(out, ArrayOf(BulkStr(id.String()), BulkOf(n.consumer), Integer(idle), Integer(n.count)))
		count--
		return true
	})
	return ArrayOf(out...)
}

// pendingSummary is XPENDING's short form: the count, the first and last
// pending ids, and the consumers with pending entries.
func (g *group) pendingSummary() Value {
	if g.pending == 0 {
		return ArrayOf(Integer(0), NilBulk, NilBulk, Value{K: NullArray})
	}
	var first, last streamID
	got := false
	g.pelFrom(nil, streamID{}, func(id streamID, _ nack) bool {
		first, got = id, true
		return false
	})
	cur := g.s.c.tx.Bucket(bucketXPEL).Cursor()
	if k, _ := cur.Seek(g.pelKey(maxStreamID)); k != nil && bytes.HasPrefix(k, g.gp) {
		last = readID(k[len(g.gp):])
	} else if k, _ := cur.Prev(); got && k != nil && bytes.HasPrefix(k, g.gp) {
		last = readID(k[len(g.gp):])
	}
	var cs []Value
	for _, name := range g.consumerNames() {
		if cr, _ := g.consumerOf(name); cr.pending > 0 {
			cs = append(cs, ArrayOf(BulkOf(name), BulkStr(strconv.FormatInt(cr.pending, 10))))
		}
	}
	return ArrayOf(Integer(g.pending), BulkStr(first.String()), BulkStr(last.String()), ArrayOf(cs...))
}

// claim gives the pending entry id to a consumer, as XCLAIM and
// XAUTOCLAIM do: delivered at time, counted unless justID or with
// retry (>= 0) as its count. It answers the entry, or its id with
// justID.
func (g *group) claim(name []byte, id streamID, n nack, had bool, time, retry int64, justID bool) Value {
	nn := nack{consumer: name, time: time, count: n.count}
	switch {
	case retry >= 0:
		nn.count = retry
	case !justID:
		nn.count++
	}
	g.setNack(id, nn, n, had)
	if justID {
		return BulkStr(id.String())
	}
	fields, _ := g.s.entry(id)
	return entryValue(id, fields)
}

// cmdXClaim: XCLAIM key group consumer min-idle-time id [id ...] [IDLE
// ms] [TIME unix-ms] [RETRYCOUNT n] [FORCE] [JUSTID] [LASTID id].
func cmdXClaim(c *ctx, a [][]byte) Value {
	s, g, wrong := c.openGroup(a[1], a[2])
	if wrong {
		return errWrongType
	}
	if g == nil {
		return errNoKeyOrGroup(a[1], a[2])
	}
	minIdle, ok := parseInt(a[4])
	if !ok {
		return Err("ERR Invalid min-idle-time argument for XCLAIM")
	}
	minIdle = max(minIdle, 0)
	j := 5
	var ids []streamID
	for ; j < len(a); j++ {
		id, _, ok := parseStreamID(a[j], 0, true, false)
		if !ok {
			break
		}
		ids = append(ids, id)
	}
	retry, delivery := int64(-1), int64(-1)
	force, justID := false, false
	var lastID streamID
	for ; j < len(a); j++ {
		more := len(a) - 1 - j
		switch {
		case isOpt(a[j], "force"):
			force = true
		case isOpt(a[j], "justid"):
			justID = true
		case isOpt(a[j], "idle") && more > 0:
			j++
			n, ok := parseInt(a[j])
			if !ok {
				return Err("ERR Invalid IDLE option argument for XCLAIM")
			}
			delivery = c.now - n
		case isOpt(a[j], "time") && more > 0:
			j++
			n, ok := parseInt(a[j])
			if !ok {
				return Err("ERR Invalid TIME option argument for XCLAIM")
			}
			delivery = n
		case isOpt(a[j], "retrycount") && more > 0:
			j++
			n, ok := parseInt(a[j])
			if !ok {
				return Err("ERR Invalid RETRYCOUNT option argument for XCLAIM")
			}
			retry = n
		case isOpt(a[j], "lastid") && more > 0:
			j++
			id, _, ok := parseStreamID(a[j], 0, true, false)
			if !ok {
				return errStreamID
			}
			lastID = id
		default:
			return Err("ERR Unrecognized XCLAIM option '" + string(cstr(a[j])) + "'")
		}
	}
	checkGroupKey(a[1], a[2], a[3])
	if lastID.cmp(g.last) > 0 {
		g.last = lastID
	}
	if delivery < 0 || delivery > c.now {
		delivery = c.now
	}
	out := []Value{}
	seen := false
	for _, id := range ids {
		n, had := g.nackOf(id)
		if _, exists := s.entry(id); !exists {
			if had {
				g.delNack(id, n)
			}
			continue
		}
		if !had && !force {
			continue
		}
		if had && minIdle > 0 && c.now-n.time < minIdle {
			continue
		}
		if !seen {
			g.seen(a[3])
			seen = true
		}
		out = append(out, g.claim(a[3], id, n, had, delivery, retry, justID))
	}
	g.save()
	return ArrayOf(out...)
}

// cmdXAutoClaim: XAUTOCLAIM key group consumer min-idle-time start
// [COUNT n] [JUSTID]. The reply is the next start, the claimed entries,
// and the ids found deleted from the stream (which leave the PEL).
func cmdXAutoClaim(c *ctx, a [][]byte) Value {
	minIdle, ok := parseInt(a[4])
	if !ok {
		return Err("ERR Invalid min-idle-time argument for XAUTOCLAIM")
	}
	minIdle = max(minIdle, 0)
	start, excl, ok := parseRangeID(a[5], 0)
	if !ok {
		return errStreamID
	}
	if excl {
		if start, ok = start.incr(); !ok {
			return Err("ERR invalid start ID for the interval")
		}
	}
	count, justID := int64(100), false
	for j := 6; j < len(a); j++ {
		switch {
		case isOpt(a[j], "count") && j+1 < len(a):
			n, ok := parseInt(a[j+1])
			if !ok || n < 1 || n > math.MaxInt64/16 {
				return Err("ERR COUNT must be > 0")
			}
			count = n
			j++
		case isOpt(a[j], "justid"):
			justID = true
		default:
			return errSyntax
		}
	}
	s, g, wrong := c.openGroup(a[1], a[2])
	if wrong {
		return errWrongType
	}
	if g == nil {
		return errNoKeyOrGroup(a[1], a[2])
	}
	checkGroupKey(a[1], a[2], a[3])
	// The PEL is walked first and changed after: claims and deletions
	// would otherwise move the cursor under the walk. Like Redis, at most
	// count entries are claimed or found deleted, after at most ten times
	// as many are looked at; the next start is the entry after the last
	// one looked at.
	type action struct {
		id      streamID
		n       nack
		deleted bool
	}
	attempts, left := count*10, count
	var acts []action
	var next streamID
	g.pelFrom(nil, start, func(id streamID, n nack) bool {
		if attempts == 0 || left == 0 {
			next = id
			return false
		}
		attempts--
		if _, exists := s.entry(id); !exists {
			acts = append(acts, action{id, n, true})
			left--
			return true
		}
		if minIdle > 0 && c.now-n.time < minIdle {
			return true
		}
		acts = append(acts, action{id, n, false})
		left--
		return true
	})
	claimed, deleted := []Value{}, []Value{}
	for _, act := range acts {
		if act.deleted {
			g.delNack(act.id, act.n)
			deleted = append(deleted, BulkStr(act.id.String()))
			continue
		}
		g.seen(a[3])
		claimed = append(claimed, g.claim(a[3], act.id, act.n, true, c.now, -1, justID))
	}
	g.save()
	return ArrayOf(BulkStr(next.String()), ArrayOf(claimed...), ArrayOf(deleted...))
}

// cmdXInfo: XINFO STREAM key [FULL [COUNT n]], XINFO GROUPS key, XINFO
// CONSUMERS key group.
func cmdXInfo(c *ctx, a [][]byte) Value {
	sub := strings.ToLower(string(a[1]))
	s, wrong := c.openStream(a[2], false)
	if s == nil && !wrong {
		return errNoSuchKey
	}
	if wrong {
		return errWrongType
	}
	switch sub {
	case "consumers":
		g := s.group(a[3])
		if g == nil {
			return errNoGroup(a[2], a[3])
		}
		out := []Value{}
		for _, name := range g.consumerNames() {
			cr, _ := g.consumerOf(name)
			out = append(out, mapOf("name", BulkOf(name), "pending", Integer(cr.pending), "idle", Integer(max(c.now-cr.seen, 0))))
		}
		return ArrayOf(out...)
	case "groups":
		out := []Value{}
		for _, name := range s.groupNames() {
			g := s.group(name)
			out = append(out, mapOf("name", BulkOf(name), "consumers", Integer(g.consumers), "pending", Integer(g.pending),
				"last-delivered-id", BulkStr(g.last.String()), "entries-read", g.readValue(), "lag", g.lagValue()))
		}
		return ArrayOf(out...)
	}
	full, count := false, int64(10)
	if len(a) > 3 {
		if !isOpt(a[3], "full") {
			return subSyntaxErr(a)
		}
		full = true
		if len(a) > 4 {
			if len(a) != 6 || !isOpt(a[4], "count") {
				return subSyntaxErr(a)
			}
			n, ok := parseInt(a[5])
			if !ok {
				return errNotInt
			}
			count = max(n, 0)
		}
	}
	return s.info(full, count)
}

func (g *group) readValue() Value {
	if g.read == invalidRead {
		return NilBulk
	}
	return Integer(g.read)
}

func (g *group) lagValue() Value {
	if lag, ok := g.lag(); ok {
		return Integer(lag)
	}
	return NilBulk
}

// mapOf is a map reply of name, value pairs.
func mapOf(kv ...any) Value {
	out := make([]Value, len(kv))
	for i, x := range kv {
		if name, ok := x.(string); ok && i%2 == 0 {
			out[i] = BulkStr(name)
		} else {
			out[i] = x.(Value)
		}
	}
	return Value{K: Map, A: out}
}

// radixKeys stands in for Redis's radix-tree key count, which describes
// its memory layout: mcpd answers the count of 100-entry nodes Redis
// would use for an append-only stream, and one more node (docs/redis.md).
func (s *stream) radixKeys() int64 { return int64((s.length + 99) / 100) }

// info is XINFO STREAM's reply.
func (s *stream) info(full bool, count int64) Value {
	keys := s.radixKeys()
	head := []any{"length", Integer(int64(s.length)), "radix-tree-keys", Integer(keys), "radix-tree-nodes", Integer(keys + 1),
		"last-generated-id", BulkStr(s.last.String()), "max-deleted-entry-id", BulkStr(s.maxDel.String()),
		"entries-added", Integer(int64(s.added)), "recorded-first-entry-id", BulkStr(s.first.String())}
	if !full {
		first, last := NilBulk, NilBulk
		if e := s.rangeOf(streamID{}, maxStreamID, 1, false); len(e) > 0 {
			first = e[0]
		}
		if e := s.rangeOf(streamID{}, maxStreamID, 1, true); len(e) > 0 {
			last = e[0]
		}
		return mapOf(append(head, "groups", Integer(int64(len(s.groupNames()))), "first-entry", first, "last-entry", last)...)
	}
	var groups []Value
	for _, name := range s.groupNames() {
		g := s.group(name)
		var pel []Value
		g.pelFrom(nil, streamID{}, func(id streamID, n nack) bool {
			if count > 0 && int64(len(pel)) >= count {
				return false
			}
			pel = append(pel, ArrayOf(BulkStr(id.String()), BulkOf(n.consumer), Integer(n.time), Integer(n.count)))
			return true
		})
		var cons []Value
		for _, cname := range g.consumerNames() {
			cr, _ := g.consumerOf(cname)
			var cpel []Value
			g.pelFrom(cname, streamID{}, func(id streamID, n nack) bool {
				if count > 0 && int64(len(cpel)) >= count {
					return false
				}
				cpel = append(cpel, ArrayOf(BulkStr(id.String()), Integer(n.time), Integer(n.count)))
				return true
			})
			cons = append(cons, mapOf("name", BulkOf(cname), "seen-time", Integer(cr.seen), "pel-count", Integer(cr.pending), "pending", ArrayOf(cpel...)))
		}
		groups = append(groups, mapOf("name", BulkOf(name), "last-delivered-id", BulkStr(g.last.String()), "entries-read", g.readValue(),
			"lag", g.lagValue(), "pel-count", Integer(g.pending), "pending", ArrayOf(pel...), "consumers", ArrayOf(cons...)))
	}
	return mapOf(append(head, "entries", ArrayOf(s.rangeOf(streamID{}, maxStreamID, count, false)...), "groups", ArrayOf(groups...))...)
}

// cmdXSetID: XSETID key last-id [ENTRIESADDED n] [MAXDELETEDID id].
func cmdXSetID(c *ctx, a [][]byte) Value {
	id, _, ok := parseStreamID(a[2], 0, true, false)
	if !ok {
		return errStreamID
	}
	added := int64(-1)
	var maxDel streamID
	for i := 3; i < len(a); i += 2 {
		more := len(a) - 1 - i
		switch {
		case isOpt(a[i], "entriesadded") && more > 0:
			n, ok := parseInt(a[i+1])
			if !ok {
				return errNotInt
			}
			if n < 0 {
				return Err("ERR entries_added must be positive")
			}
			added = n
		case isOpt(a[i], "maxdeletedid") && more > 0:
			m, _, ok := parseStreamID(a[i+1], 0, true, false)
			if !ok {
				return errStreamID
			}
			if id.cmp(m) < 0 {
				return Err("ERR The ID specified in XSETID is smaller than the provided max_deleted_entry_id")
			}
			maxDel = m
		default:
			return errSyntax
		}
	}
	s, wrong := c.openStream(a[1], false)
	if wrong {
		return errWrongType
	}
	if s == nil {
		return errNoSuchKey
	}
	if s.length > 0 {
		if id.cmp(s.lastEntry()) < 0 {
			return Err("ERR The ID specified in XSETID is smaller than the target stream top item")
		}
		if added != -1 && s.length > uint64(added) {
			return Err("ERR The entries_added specified in XSETID is smaller than the target stream length")
		}
	}
	if id.cmp(s.maxDel) < 0 {
		return Err("ERR The ID specified in XSETID is smaller than current max_deleted_entry_id")
	}
	s.last = id
	if added != -1 {
		s.added = uint64(added)
	}
	if maxDel != (streamID{}) {
		s.maxDel = maxDel
	}
	s.save()
	return OK
}

// openGroup opens the stream at key and its group name: wrong when key
// holds another type, nil for what does not exist.
func (c *ctx) openGroup(key, name []byte) (s *stream, g *group, wrong bool) {
	s, wrong = c.openStream(key, false)
	if s != nil {
		g = s.group(name)
	}
	return s, g, wrong
}

// parseIDs reads strict stream ids; ok is false at the first that is not.
func parseIDs(args [][]byte) ([]streamID, bool) {
	ids := make([]streamID, len(args))
	for j, arg := range args {
		id, _, ok := parseStreamID(arg, 0, true, false)
		if !ok {
			return nil, false
		}
		ids[j] = id
	}
	return ids, true
}
