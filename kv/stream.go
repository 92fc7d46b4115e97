package kv

import (
	"bytes"
	"encoding/binary"
	"math"
	"strconv"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Streams without consumer groups: XADD XLEN XRANGE XREVRANGE XDEL XTRIM
// and XREAD (docs/redis.md). An emptied stream stays, as in Redis.

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
	errXReadBlock   = Err("ERR XREAD BLOCK is not supported yet")
	errXReadBalance = Err("ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.")
)

// streamID is an entry's id: milliseconds and a sequence number.
type streamID struct{ ms, seq uint64 }

var maxStreamID = streamID{math.MaxUint64, math.MaxUint64}

func (a streamID) cmp(b streamID) int {
	switch {
	case a.ms != b.ms:
		if a.ms < b.ms {
			return -1
		}
		return 1
	case a.seq < b.seq:
		return -1
	case a.seq > b.seq:
		return 1
	}
	return 0
}

func (a streamID) String() string {
	return strconv.FormatUint(a.ms, 10) + "-" + strconv.FormatUint(a.seq, 10)
}

// incr returns the next id; ok is false past the last possible one.
func (a streamID) incr() (streamID, bool) {
	switch {
	case a.seq != math.MaxUint64:
		return streamID{a.ms, a.seq + 1}, true
	case a.ms != math.MaxUint64:
		return streamID{a.ms + 1, 0}, true
	}
	return streamID{}, false
}

// decr returns the previous id; ok is false before 0-0.
func (a streamID) decr() (streamID, bool) {
	switch {
	case a.seq != 0:
		return streamID{a.ms, a.seq - 1}, true
	case a.ms != 0:
		return streamID{a.ms - 1, math.MaxUint64}, true
	}
	return maxStreamID, false
}

func (a streamID) append(b []byte) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(b, a.ms), a.seq)
}

func readID(b []byte) streamID {
	return streamID{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])}
}

// cstr is an argument as Redis's C string functions see it: up to its
// first NUL byte.
func cstr(b []byte) []byte {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return b[:i]
	}
	return b
}

// isOpt reports whether an argument is the option name (any case).
func isOpt(b []byte, name string) bool { return strings.EqualFold(string(cstr(b)), name) }

// parseU64 reads a number part of an id as Redis does: a plain decimal,
// or failing that what C's strtoull accepts in full (leading white
// space, a sign, leading zeros; a '-' negates modulo 2^64).
func parseU64(s []byte) (uint64, bool) {
	if n, ok := parseInt(s); ok {
		return uint64(n), n >= 0
	}
	i := 0
	for i < len(s) && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')) {
		i++
	}
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	if i == len(s) {
		return 0, false
	}
	var n uint64
	for ; i < len(s); i++ {
		d := s[i] - '0'
		if d > 9 || n > (math.MaxUint64-uint64(d))/10 {
			return 0, false
		}
		n = n*10 + uint64(d)
	}
	if neg {
		n = -n
	}
	return n, true
}

// parseStreamID reads an id argument: "ms-seq", "ms" (seq missingSeq),
// and unless strict "-" and "+". With autoSeq, "ms-*" is accepted and
// seqGiven reports whether the sequence was given.
func parseStreamID(arg []byte, missingSeq uint64, strict, autoSeq bool) (id streamID, seqGiven bool, ok bool) {
	if len(arg) > 127 {
		return id, false, false
	}
	s := cstr(arg)
	if len(s) == 1 && (s[0] == '-' || s[0] == '+') {
		if strict {
			return id, false, false
		}
		if s[0] == '-' {
			return streamID{}, true, true
		}
		return maxStreamID, true, true
	}
	msPart, seqPart, dash := bytes.Cut(s, []byte("-"))
	ms, ok := parseU64(msPart)
	if !ok {
		return id, false, false
	}
	seq, seqGiven := missingSeq, true
	if dash {
		if autoSeq && len(seqPart) == 1 && seqPart[0] == '*' {
			seq, seqGiven = 0, false
		} else if seq, ok = parseU64(seqPart); !ok {
			return id, false, false
		}
	}
	return streamID{ms, seq}, seqGiven, true
}

// parseRangeID reads an XRANGE bound: an id, "-", "+", or "(" and a
// strict id for an exclusive bound.
func parseRangeID(arg []byte, missingSeq uint64) (id streamID, excl, ok bool) {
	if len(arg) > 1 && arg[0] == '(' {
		id, _, ok = parseStreamID(arg[1:], missingSeq, true, false)
		return id, true, ok
	}
	id, _, ok = parseStreamID(arg, missingSeq, false, false)
	return id, false, ok
}

// stream is one stream of the keyspace, open for a command.
type stream struct {
	c      *ctx
	key    []byte
	prefix []byte
	m      meta
	isNew  bool // not stored yet
	b      *bolt.Bucket

	last, first, maxDel streamID
	length, added       uint64
}

// openStream returns the live stream at key; wrong is set when key holds
// another type. With create, an absent stream is made; it is stored by
// save.
func (c *ctx) openStream(key []byte, create bool) (s *stream, wrong bool) {
	m, ok := c.lookup(key)
	if ok && m.typ != TypeStream {
		return nil, true
	}
	if !ok && !create {
		return nil, false
	}
	s = &stream{c: c, key: key, prefix: collKey(key), m: m, b: c.tx.Bucket(bucketStream)}
	if !ok {
		s.m, s.isNew = meta{typ: TypeStream}, true
		return s, false
	}
	if v := c.tx.Bucket(bucketXMeta).Get(dbKey(key)); len(v) == 64 {
		s.last, s.length, s.added = readID(v), binary.BigEndian.Uint64(v[16:]), binary.BigEndian.Uint64(v[24:])
		s.maxDel, s.first = readID(v[32:]), readID(v[48:])
	}
	return s, false
}

// save stores the stream's metadata (and the key, for a new stream).
func (s *stream) save() {
	if s.isNew {
		s.c.setMeta(s.key, meta{}, s.m, false)
		s.isNew = false
	}
	v := s.last.append(make([]byte, 0, 64))
	v = binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(v, s.length), s.added)
	v = s.first.append(s.maxDel.append(v))
	must(s.c.tx.Bucket(bucketXMeta).Put(dbKey(s.key), v))
}

func (s *stream) entryKey(id streamID) []byte { return id.append(bytes.Clone(s.prefix)) }

// encodeFields packs field value pairs, each behind its length.
func encodeFields(fv [][]byte) []byte {
	var b []byte
	for _, f := range fv {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

func decodeFields(b []byte) []Value {
	var out []Value
	for len(b) >= 4 {
		n := binary.BigEndian.Uint32(b)
		out = append(out, BulkOf(bytes.Clone(b[4:4+n])))
		b = b[4+n:]
	}
	return out
}

// add appends an entry with a new id greater than the last.
func (s *stream) add(id streamID, fv [][]byte) {
	must(s.b.Put(s.entryKey(id), encodeFields(fv)))
	s.length++
	s.added++
	s.last = id
	if s.length == 1 {
		s.first = id
	}
}

// remove deletes the entry at key k (an entry key of this stream).
func (s *stream) remove(k []byte) {
	must(s.b.Delete(k))
	s.length--
}

// setFirst finds the first id again after a removal.
func (s *stream) setFirst() {
	s.first = streamID{}
	if s.length == 0 {
		return
	}
	if k, _ := s.b.Cursor().Seek(s.prefix); k != nil && bytes.HasPrefix(k, s.prefix) {
		s.first = readID(k[len(s.prefix):])
	}
}

// rangeOf returns the entries from..to (inclusive) in id order, or
// reversed; count 0 is no limit.
func (s *stream) rangeOf(from, to streamID, count int64, rev bool) []Value {
	out := []Value{}
	if from.cmp(to) > 0 {
		return out
	}
	cur := s.b.Cursor()
	lo, hi := s.entryKey(from), s.entryKey(to)
	var k, v []byte
	if rev {
		k, v = cur.Seek(hi)
		if k == nil || bytes.Compare(k, hi) > 0 {
			k, v = cur.Prev()
		}
	} else {
		k, v = cur.Seek(lo)
	}
	for k != nil && bytes.HasPrefix(k, s.prefix) && bytes.Compare(k, lo) >= 0 && bytes.Compare(k, hi) <= 0 {
		if count > 0 && int64(len(out)) == count {
			break
		}
		id := readID(k[len(s.prefix):])
		out = append(out, ArrayOf(BulkStr(id.String()), ArrayOf(decodeFields(v)...)))
		if rev {
			k, v = cur.Prev()
		} else {
			k, v = cur.Next()
		}
	}
	return out
}

// trimArgs are the trimming options of XADD and XTRIM.
type trimArgs struct {
	strategy byte // 0 none, 'l' MAXLEN, 'i' MINID
	approx   bool
	maxLen   int64
	minID    streamID
	limit    int64 // 0: none
}

// parseAddTrim reads XADD's options (xadd) or XTRIM's from a[2:]. For
// XADD it returns the position of the id argument (len(a) when none);
// on an error it returns the reply.
func parseAddTrim(a [][]byte, xadd bool) (t trimArgs, noMk bool, idPos int, id streamID, idGiven, seqGiven bool, bad *Value) {
	fail := func(v Value) (trimArgs, bool, int, streamID, bool, bool, *Value) {
		return t, false, 0, id, false, false, &v
	}
	limitGiven := false
	i := 2
	for ; i < len(a); i++ {
		more := len(a) - 1 - i
		opt := cstr(a[i])
		switch {
		case xadd && len(opt) == 1 && opt[0] == '*':
		case isOpt(opt, "maxlen") && more > 0:
			if t.strategy != 0 {
				return fail(Err("ERR syntax error, MAXLEN and MINID options at the same time are not compatible"))
			}
			t.approx = false
			if next := cstr(a[i+1]); more >= 2 && len(next) == 1 && (next[0] == '~' || next[0] == '=') {
				t.approx = next[0] == '~'
				i++
			}
			n, ok := parseInt(a[i+1])
			if !ok {
				return fail(errNotInt)
			}
			if n < 0 {
				return fail(Err("ERR The MAXLEN argument must be >= 0."))
			}
			t.maxLen, t.strategy = n, 'l'
			i++
			continue
		case isOpt(opt, "minid") && more > 0:
			if t.strategy != 0 {
				return fail(Err("ERR syntax error, MAXLEN and MINID options at the same time are not compatible"))
			}
			t.approx = false
			if next := cstr(a[i+1]); more >= 2 && len(next) == 1 && (next[0] == '~' || next[0] == '=') {
				t.approx = next[0] == '~'
				i++
			}
			m, _, ok := parseStreamID(a[i+1], 0, true, false)
			if !ok {
				return fail(errStreamID)
			}
			t.minID, t.strategy = m, 'i'
			i++
			continue
		case isOpt(opt, "limit") && more > 0:
			n, ok := parseInt(a[i+1])
			if !ok {
				return fail(errNotInt)
			}
			if n < 0 {
				return fail(Err("ERR The LIMIT argument must be >= 0."))
			}
			t.limit, limitGiven = n, true
			i++
			continue
		case xadd && isOpt(opt, "nomkstream"):
			noMk = true
			continue
		case xadd:
			var ok bool
			id, seqGiven, ok = parseStreamID(a[i], 0, true, true)
			if !ok {
				return fail(errStreamID)
			}
			idGiven = true
		default:
			return fail(errSyntax)
		}
		break
	}
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
	return t, noMk, i, id, idGiven, seqGiven, nil
}

// trim removes entries from the head as t says and returns how many.
// Trimming is always exact, also with "~" (Redis then removes only whole
// nodes of its radix tree, which may be fewer entries); "~"'s LIMIT
// bounds the count removed.
func (s *stream) trim(t trimArgs) int64 {
	var n int64
	cur := s.b.Cursor()
	var ks [][]byte
	for k, _ := cur.Seek(s.prefix); k != nil && bytes.HasPrefix(k, s.prefix); k, _ = cur.Next() {
		if t.limit != 0 && n >= t.limit {
			break
		}
		if t.strategy == 'l' && s.length-uint64(n) <= uint64(t.maxLen) {
			break
		}
		if t.strategy == 'i' && readID(k[len(s.prefix):]).cmp(t.minID) >= 0 {
			break
		}
		ks = append(ks, bytes.Clone(k))
		n++
	}
	for _, k := range ks {
		s.remove(k)
	}
	if n > 0 {
		s.setFirst()
	}
	return n
}

// cmdXAdd: XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT
// count]] *|id field value [field value ...]. An automatic id takes the
// command's stamped time, so every node gives the same one.
func cmdXAdd(c *ctx, a [][]byte) Value {
	t, noMk, idPos, id, idGiven, seqGiven, bad := parseAddTrim(a, true)
	if bad != nil {
		return *bad
	}
	fieldPos := idPos + 1
	if n := len(a) - fieldPos; n < 2 || n%2 == 1 {
		return ErrArity("xadd")
	}
	if idGiven && seqGiven && id == (streamID{}) {
		return errXAddZero
	}
	if !fits(a[1], 16) {
		return errTooLong
	}
	s, wrong := c.openStream(a[1], !noMk)
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
	case !idGiven:
		if now := uint64(max(c.now, 0)); now > s.last.ms {
			id = streamID{now, 0}
		} else {
			id, _ = s.last.incr()
		}
	case !seqGiven && id.ms == s.last.ms:
		if s.last.seq == math.MaxUint64 {
			return errXAddSmaller
		}
		id = streamID{s.last.ms, s.last.seq + 1}
	}
	if id.cmp(s.last) <= 0 {
		return errXAddSmaller
	}
	s.add(id, a[fieldPos:])
	if t.strategy != 0 {
		s.trim(t)
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
	ids := make([]streamID, len(a)-2)
	for j, arg := range a[2:] {
		id, _, ok := parseStreamID(arg, 0, true, false)
		if !ok {
			return errStreamID
		}
		ids[j] = id
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
	t, _, _, _, _, _, bad := parseAddTrim(a, false)
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
	n := s.trim(t)
	if n > 0 {
		s.save()
	}
	return Integer(n)
}

// cmdXRead: XREAD [COUNT n] [BLOCK ms] STREAMS key [key ...] id [id ...],
// without blocking: with BLOCK and nothing to read it answers an error.
// RESP3 gets a map of key to entries, RESP2 an array of [key, entries].
func cmdXRead(c *ctx, a [][]byte) Value {
	var count int64
	block := false
	streamsAt := 0
	for i := 1; i < len(a) && streamsAt == 0; i++ {
		more := len(a) - i - 1
		switch {
		case isOpt(a[i], "block") && more > 0:
			i++
			n, ok := parseInt(a[i])
			if !ok {
				return Err("ERR timeout is not an integer or out of range")
			}
			if n < 0 {
				return Err("ERR timeout is negative")
			}
			block = true
		case isOpt(a[i], "count") && more > 0:
			i++
			n, ok := parseInt(a[i])
			if !ok {
				return errNotInt
			}
			count = max(n, 0)
		case isOpt(a[i], "streams") && more > 0:
			streamsAt = i + 1
			if (len(a)-streamsAt)%2 != 0 {
				return errXReadBalance
			}
		case isOpt(a[i], "group") && more >= 2:
			return Err("ERR The GROUP option is only supported by XREADGROUP. You called XREAD instead.")
		case isOpt(a[i], "noack"):
			return Err("ERR The NOACK option is only supported by XREADGROUP. You called XREAD instead.")
		default:
			return errSyntax
		}
	}
	if streamsAt == 0 {
		return errSyntax
	}
	n := (len(a) - streamsAt) / 2
	keys, after := a[streamsAt:streamsAt+n], make([]streamID, n)
	streams := make([]*stream, n)
	for i, key := range keys {
		s, wrong := c.openStream(key, false)
		if wrong {
			return errWrongType
		}
		streams[i] = s
		arg := a[streamsAt+n+i]
		switch string(cstr(arg)) {
		case "$":
			if s != nil {
				after[i] = s.last
			}
			continue
		case ">":
			return Err("ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.")
		}
		id, _, ok := parseStreamID(arg, 0, true, false)
		if !ok {
			return errStreamID
		}
		after[i] = id
	}
	out := Value{K: PairMap, A: []Value{}}
	for i, s := range streams {
		if s == nil || s.length == 0 {
			continue
		}
		from, ok := after[i].incr()
		if !ok {
			continue
		}
		entries := s.rangeOf(from, maxStreamID, count, false)
		if len(entries) == 0 {
			continue
		}
		out.A = append(out.A, BulkOf(bytes.Clone(keys[i])), ArrayOf(entries...))
	}
	if len(out.A) > 0 {
		return out
	}
	if block {
		return errXReadBlock
	}
	return Value{K: NullArray}
}

// xreadKeys returns the keys of an XREAD: the first half of the
// arguments after STREAMS (none when they do not pair up).
func xreadKeys(a [][]byte) [][]byte {
	for i := 1; i < len(a)-1; i++ {
		switch {
		case isOpt(a[i], "streams"):
			rest := a[i+1:]
			if len(rest)%2 != 0 {
				return nil
			}
			return rest[:len(rest)/2]
		case isOpt(a[i], "count"), isOpt(a[i], "block"):
			i++
		}
	}
	return nil
}
