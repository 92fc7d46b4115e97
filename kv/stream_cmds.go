package kv

import (
	"bytes"
	"math"
)

// The stream commands: XADD XLEN XRANGE XREVRANGE XDEL XTRIM and XREAD
// (whose BLOCK the transport implements); the consumer groups' are in
// stream_group_cmds.go.

func init() {
	commands["xadd"] = spec{-5, true, cmdXAdd}
	commands["xlen"] = spec{2, false, cmdXLen}
	commands["xrange"] = spec{-4, false, cmdXRange(false)}
	commands["xrevrange"] = spec{-4, false, cmdXRange(true)}
	commands["xdel"] = spec{-3, true, cmdXDel}
	commands["xtrim"] = spec{-4, true, cmdXTrim}
	commands["xread"] = spec{-4, false, cmdXRead}
}

// Errors of the stream commands, word for word as Redis answers.
var (
	errStreamID     = Err("ERR Invalid stream ID specified as stream command argument")
	errXAddSmaller  = Err("ERR The ID specified in XADD is equal or smaller than the target stream top item")
	errXAddZero     = Err("ERR The ID specified in XADD must be greater than 0-0")
	errXAddExhaust  = Err("ERR The stream has exhausted the last possible ID, unable to add more items")
	errXReadBlock   = Err("ERR XREAD BLOCK found nothing to read")
	errXReadBalance = Err("ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.")
)

// addArgs are XADD's options and id, or XTRIM's options.
type addArgs struct {
	trim     trimArgs
	noMk     bool     // NOMKSTREAM
	idPos    int      // the id argument (len(a) when none)
	id       streamID // given id, when idGiven
	idGiven  bool     // not "*"
	seqGiven bool     // not "ms-*"
}

// parseAddTrim reads XADD's options and id (xadd) or XTRIM's options
// from a[2:], in Redis's order of checks; on an error it returns the
// reply.
func parseAddTrim(a [][]byte, xadd bool) (addArgs, *Value) {
	var p addArgs
	t := &p.trim
	fail := func(v Value) (addArgs, *Value) { return addArgs{}, &v }
	limitGiven := false
	i := 2
	for ; i < len(a); i++ {
		more := len(a) - 1 - i
		opt := cstr(a[i])
		switch {
		case xadd && len(opt) == 1 && opt[0] == '*':
		case (isOpt(opt, "maxlen") || isOpt(opt, "minid")) && more > 0:
			if t.strategy != 0 {
				return fail(Err("ERR syntax error, MAXLEN and MINID options at the same time are not compatible"))
			}
			t.approx = false
			if next := cstr(a[i+1]); more >= 2 && len(next) == 1 && (next[0] == '~' || next[0] == '=') {
				t.approx = next[0] == '~'
				i++
			}
			i++
			if isOpt(opt, "minid") {
				m, _, ok := parseStreamID(a[i], 0, true, false)
				if !ok {
					return fail(errStreamID)
				}
				t.minID, t.strategy = m, 'i'
				continue
			}
			n, ok := parseInt(a[i])
			if !ok {
				return fail(errNotInt)
			}
			if n < 0 {
				return fail(Err("ERR The MAXLEN argument must be >= 0."))
			}
			t.maxLen, t.strategy = n, 'l'
			continue
		case isOpt(opt, "limit") && more > 0:
			i++
			n, ok := parseInt(a[i])
			if !ok {
				return fail(errNotInt)
			}
			if n < 0 {
				return fail(Err("ERR The LIMIT argument must be >= 0."))
			}
			t.limit, limitGiven = n, true
			continue
		case xadd && isOpt(opt, "nomkstream"):
			p.noMk = true
			continue
		case xadd:
			var ok bool
			if p.id, p.seqGiven, ok = parseStreamID(a[i], 0, true, true); !ok {
				return fail(errStreamID)
			}
			p.idGiven = true
		default:
			return fail(errSyntax)
		}
		break
	}
	p.idPos = i
	if t.limit != 0 && t.strategy == 0 {
		return fail(Err("ERR syntax error, LIMIT cannot be used without specifying a trimming strategy"))
	}
	if !xadd && t.strategy == 0 {
		return fail(Err("ERR syntax error, XTRIM must be called with a trimming strategy"))
	}
	switch {
	case limitGiven && !t.approx:
		return fail(Err("ERR syntax error, LIMIT cannot be used without the special ~ option"))
	case !limitGiven && t.approx:
		t.limit = 10000 // Redis's default: 100 times the entries of a node
	case !limitGiven:
		t.limit = 0
	}
	return p, nil
}

// cmdXAdd: XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT
// count]] *|id field value [field value ...]. An automatic id takes the
// command's stamped time, so every node gives the same one.
func cmdXAdd(c *ctx, a [][]byte) Value {
	p, bad := parseAddTrim(a, true)
	if bad != nil {
		return *bad
	}
	id := p.id
	fieldPos := p.idPos + 1
	if n := len(a) - fieldPos; n < 2 || n%2 == 1 {
		return ErrArity("xadd")
	}
	if p.idGiven && p.seqGiven && id == (streamID{}) {
		return errXAddZero
	}
	if !fits(a[1], 16) {
		return errTooLong
	}
	s, wrong := c.openStream(a[1], !p.noMk)
	if wrong {
		return errWrongType
	}
	if s == nil {
		return NilBulk
	}
	if s.last == maxStreamID {
		return errXAddExhaust
	}
	switch {
	case !p.idGiven:
		if now := uint64(max(c.now, 0)); now > s.last.ms {
			id = streamID{now, 0}
		} else {
			id, _ = s.last.incr()
		}
	case !p.seqGiven && id.ms == s.last.ms:
		if s.last.seq == math.MaxUint64 {
			return errXAddSmaller
		}
		id = streamID{s.last.ms, s.last.seq + 1}
	}
	if id.cmp(s.last) <= 0 {
		return errXAddSmaller
	}
	s.add(id, a[fieldPos:])
	if p.trim.strategy != 0 {
		s.trim(p.trim)
	}
	s.save()
	return BulkStr(id.String())
}

func cmdXLen(c *ctx, a [][]byte) Value {
	s, wrong := c.openStream(a[1], false)
	if wrong {
		return errWrongType
	}
	if s == nil {
		return Integer(0)
	}
	return Integer(int64(s.length))
}

// cmdXRange: XRANGE key start end [COUNT n], and XREVRANGE key end start
// [COUNT n].
func cmdXRange(rev bool) func(c *ctx, a [][]byte) Value {
	return func(c *ctx, a [][]byte) Value {
		startArg, endArg := a[2], a[3]
		if rev {
			startArg, endArg = endArg, startArg
		}
		start, excl, ok := parseRangeID(startArg, 0)
		if !ok {
			return errStreamID
		}
		if excl {
			if start, ok = start.incr(); !ok {
				return Err("ERR invalid start ID for the interval")
			}
		}
		end, excl, ok := parseRangeID(endArg, math.MaxUint64)
		if !ok {
			return errStreamID
		}
		if excl {
			if end, ok = end.decr(); !ok {
				return Err("ERR invalid end ID for the interval")
			}
		}
		count := int64(-1)
		for j := 4; j < len(a); j++ {
			if !isOpt(a[j], "count") || j+1 >= len(a) {
				return errSyntax
			}
			n, ok := parseInt(a[j+1])
			if !ok {
				return errNotInt
			}
			count = max(n, 0)
			j++
		}
		s, wrong := c.openStream(a[1], false)
		if wrong {
			return errWrongType
		}
		if s == nil {
			return ArrayOf()
		}
		if count == 0 {
			return Value{K: NullArray}
		}
		return ArrayOf(s.rangeOf(start, end, max(count, 0), rev)...)
	}
}

func cmdXDel(c *ctx, a [][]byte) Value {
	s, wrong := c.openStream(a[1], false)
	if wrong {
		return errWrongType
	}
	if s == nil {
		return Integer(0)
	}
	ids, ok := parseIDs(a[2:])
	if !ok {
		return errStreamID
	}
	var n int64
	firstGone := false
	for _, id := range ids {
		k := s.entryKey(id)
		if s.b.Get(k) == nil {
			continue
		}
		s.remove(k)
		firstGone = firstGone || id == s.first
		if id.cmp(s.maxDel) > 0 {
			s.maxDel = id
		}
		n++
	}
	if n > 0 {
		if s.length == 0 || firstGone {
			s.setFirst()
		}
		s.save()
	}
	return Integer(n)
}

// cmdXTrim: XTRIM key MAXLEN|MINID [=|~] threshold [LIMIT count].
func cmdXTrim(c *ctx, a [][]byte) Value {
	p, bad := parseAddTrim(a, false)
	if bad != nil {
		return *bad
	}
	s, wrong := c.openStream(a[1], false)
	if wrong {
		return errWrongType
	}
	if s == nil {
		return Integer(0)
	}
	n := s.trim(p.trim)
	if n > 0 {
		s.save()
	}
	return Integer(n)
}

// cmdXRead: XREAD [COUNT n] [BLOCK ms] STREAMS key [key ...] id [id ...],
// without blocking: with BLOCK and nothing to read it answers an error,
// and the transport waits. RESP3 gets a map of key to entries, RESP2 an
// array of [key, entries].
func cmdXRead(c *ctx, a [][]byte) Value {
	p, bad := parseReadGroup(a, false)
	if bad != nil {
		return *bad
	}
	n := len(p.keys)
	streams := make([]*stream, n)
	for i, key := range p.keys {
		s, wrong := c.openStream(key, false)
		if wrong {
			return errWrongType
		}
		streams[i] = s
		arg := a[len(a)-n+i]
		switch string(cstr(arg)) {
		case "$":
			if s != nil {
				p.ids[i] = s.last
			}
			continue
		case ">":
			return Err("ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.")
		}
		id, _, ok := parseStreamID(arg, 0, true, false)
		if !ok {
			return errStreamID
		}
		p.ids[i] = id
	}
	out := Value{K: PairMap, A: []Value{}}
	for i, s := range streams {
		if s == nil || s.length == 0 {
			continue
		}
		from, ok := p.ids[i].incr()
		if !ok {
			continue
		}
		entries := s.rangeOf(from, maxStreamID, p.count, false)
		if len(entries) == 0 {
			continue
		}
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

// WantsBlock reports whether v is the answer of XREAD or XREADGROUP to a
// valid BLOCK read that found nothing: the caller (the transport) then
// waits for entries.
func WantsBlock(v Value) bool {
	return v.K == Error && string(v.S) == string(errXReadBlock.S)
}
