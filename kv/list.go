package kv

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
)

func init() {
	commands["lpush"] = spec{-3, true, cmdPush(true, false)}
	commands["rpush"] = spec{-3, true, cmdPush(false, false)}
	commands["lpushx"] = spec{-3, true, cmdPush(true, true)}
	commands["rpushx"] = spec{-3, true, cmdPush(false, true)}
	commands["lpop"] = spec{-2, true, cmdPop("lpop", true)}
	commands["rpop"] = spec{-2, true, cmdPop("rpop", false)}
	commands["llen"] = spec{2, false, cmdLLen}
	commands["lrange"] = spec{4, false, cmdLRange}
	commands["lindex"] = spec{3, false, cmdLIndex}
	commands["lset"] = spec{4, true, cmdLSet}
	commands["lrem"] = spec{4, true, cmdLRem}
	commands["ltrim"] = spec{4, true, cmdLTrim}
	commands["linsert"] = spec{5, true, cmdLInsert}
	commands["lpos"] = spec{-3, false, cmdLPos}
	commands["lmove"] = spec{5, true, cmdLMove}
	commands["rpoplpush"] = spec{3, true, func(c *ctx, a [][]byte) Value {
		return c.move(a[1], a[2], false, true)
	}}
	commands["lmpop"] = spec{-4, true, cmdLMPop}
}

// list is one list of the keyspace, open for a command: its elements are
// at positions head..tail-1.
type list struct {
	c          *ctx
	key        []byte
	prefix     []byte
	m          meta
	head, tail int64
	b          *bolt.Bucket
}

// openList returns the live list at key; wrong is set when key holds
// another type. With create, an absent list is made (empty: the caller
// pushes before the command ends).
func (c *ctx) openList(key []byte, create bool) (l *list, wrong bool) {
	m, ok := c.lookup(key)
	if ok && m.typ != TypeList {
		return nil, true
	}
	if !ok && !create {
		return nil, false
	}
	l = &list{c: c, key: key, prefix: collKey(key), m: m, b: c.tx.Bucket(bucketList)}
	if !ok {
		l.m = meta{typ: TypeList}
		c.setMeta(key, meta{}, l.m, false)
		return l, false
	}
	if v := c.tx.Bucket(bucketLMeta).Get(dbKey(key)); len(v) == 16 {
		l.head = int64(binary.BigEndian.Uint64(v))
		l.tail = int64(binary.BigEndian.Uint64(v[8:]))
	}
	return l, false
}

func (l *list) len() int64 { return l.tail - l.head }

// posKey is the entry key of absolute position p: the sign bit flipped so
// that byte order is numeric order.
func (l *list) posKey(p int64) []byte {
	return binary.BigEndian.AppendUint64(bytes.Clone(l.prefix), uint64(p)^(1<<63))
}

// at returns a copy of the i-th element (0: the head).
func (l *list) at(i int64) []byte { return bytes.Clone(l.b.Get(l.posKey(l.head + i))) }

func (l *list) put(i int64, v []byte) { must(l.b.Put(l.posKey(l.head+i), bytes.Clone(v))) }

func (l *list) push(left bool, v []byte) {
	if left {
		l.head--
		l.put(0, v)
		return
	}
	l.tail++
	l.put(l.len()-1, v)
}

func (l *list) pop(left bool) []byte {
	i := l.len() - 1
	if left {
		i = 0
	}
	v := l.at(i)
	must(l.b.Delete(l.posKey(l.head + i)))
	if left {
		l.head++
	} else {
		l.tail--
	}
	return v
}

// rangeOf returns copies of elements from..to (inclusive, in range).
func (l *list) rangeOf(from, to int64) [][]byte {
	out := make([][]byte, 0, to-from+1)
	cur := l.b.Cursor()
	k, v := cur.Seek(l.posKey(l.head + from))
	for i := from; i <= to && k != nil && bytes.HasPrefix(k, l.prefix); i++ {
		out = append(out, bytes.Clone(v))
		k, v = cur.Next()
	}
	return out
}

// replace makes elems the whole list.
func (l *list) replace(elems [][]byte) {
	deletePrefix(l.b, l.prefix)
	l.tail = l.head
	for _, e := range elems {
		l.push(false, e)
	}
}

// save stores the list's positions, or deletes the key when it is empty.
func (l *list) save() {
	if l.len() == 0 {
		l.c.del(l.key, l.m)
		return
	}
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 16), uint64(l.head))
	must(l.c.tx.Bucket(bucketLMeta).Put(dbKey(l.key), binary.BigEndian.AppendUint64(v, uint64(l.tail))))
}

func bulks(elems [][]byte) Value {
	out := make([]Value, len(elems))
	for i, e := range elems {
		out[i] = BulkOf(e)
	}
	return Value{K: Array, A: out}
}

// parseSide parses LEFT or RIGHT.
func parseSide(b []byte) (left, ok bool) {
	switch strings.ToUpper(string(b)) {
	case "LEFT":
		return true, true
	case "RIGHT":
		return false, true
	}
	return false, false
}

// cmdPush: LPUSH/RPUSH key element [element ...]; the X variants push
// only to an existing list.
func cmdPush(left, existing bool) func(c *ctx, a [][]byte) Value {
	return func(c *ctx, a [][]byte) Value {
		if !fits(a[1], 8) {
			return errTooLong
		}
		l, wrong := c.openList(a[1], !existing)
		switch {
		case wrong:
			return errWrongType
		case l == nil:
			return Integer(0)
		}
		for _, e := range a[2:] {
			l.push(left, e)
		}
		l.save()
		return Integer(l.len())
	}
}

// cmdPop: LPOP/RPOP key [count].
func cmdPop(name string, left bool) func(c *ctx, a [][]byte) Value {
	return func(c *ctx, a [][]byte) Value {
		if len(a) > 3 {
			return ErrArity(name)
		}
		count, hasCount := int64(1), len(a) == 3
		if hasCount {
			n, ok := parseInt(a[2])
			if !ok || n < 0 {
				return Err("ERR value is out of range, must be positive")
			}
			count = n
		}
		l, wrong := c.openList(a[1], false)
		switch {
		case wrong:
			return errWrongType
		case l == nil && hasCount:
			return Value{K: NullArray}
		case l == nil:
			return NilBulk
		case !hasCount:
			v := l.pop(left)
			l.save()
			return BulkOf(v)
		}
		out := l.popN(left, count)
		l.save()
		return bulks(out)
	}
}

func (l *list) popN(left bool, count int64) [][]byte {
	count = min(count, l.len())
	out := make([][]byte, 0, count)
	for range count {
		out = append(out, l.pop(left))
	}
	return out
}

func cmdLLen(c *ctx, a [][]byte) Value {
	l, wrong := c.openList(a[1], false)
	switch {
	case wrong:
		return errWrongType
	case l == nil:
		return Integer(0)
	}
	return Integer(l.len())
}

// span turns Redis's start and stop (negative: from the end) into
// positions within a list of n elements; ok is false for an empty span.
func span(start, stop, n int64) (from, to int64, ok bool) {
	if start < 0 {
		start += n
	}
	if stop < 0 {
		stop += n
	}
	start = max(start, 0)
	if start > stop || start >= n {
		return 0, 0, false
	}
	return start, min(stop, n-1), true
}

// rangeArgs reads the start and stop of LRANGE and LTRIM (both parsed
// before the key is looked up, as Redis does) and opens the list; bad is
// set to the error reply when there is one.
func (c *ctx) rangeArgs(a [][]byte) (l *list, start, stop int64, bad *Value) {
	start, ok1 := parseInt(a[2])
	stop, ok2 := parseInt(a[3])
	if !ok1 || !ok2 {
		return nil, 0, 0, &errNotInt
	}
	l, wrong := c.openList(a[1], false)
	if wrong {
		return nil, 0, 0, &errWrongType
	}
	return l, start, stop, nil
}

func cmdLRange(c *ctx, a [][]byte) Value {
	l, start, stop, bad := c.rangeArgs(a)
	switch {
	case bad != nil:
		return *bad
	case l == nil:
		return Value{K: Array, A: []Value{}}
	}
	from, to, ok := span(start, stop, l.len())
	if !ok {
		return Value{K: Array, A: []Value{}}
	}
	return bulks(l.rangeOf(from, to))
}

// index turns a Redis index (negative: from the end) into a position.
func (l *list) index(i int64) (int64, bool) {
	if i < 0 {
		i += l.len()
	}
	return i, i >= 0 && i < l.len()
}

func cmdLIndex(c *ctx, a [][]byte) Value {
	l, wrong := c.openList(a[1], false)
	switch {
	case wrong:
		return errWrongType
	case l == nil:
		return NilBulk
	}
	n, ok := parseInt(a[2])
	if !ok {
		return errNotInt
	}
	i, ok := l.index(n)
	if !ok {
		return NilBulk
	}
	return BulkOf(l.at(i))
}

func cmdLSet(c *ctx, a [][]byte) Value {
	l, wrong := c.openList(a[1], false)
	switch {
	case wrong:
		return errWrongType
	case l == nil:
		return Err("ERR no such key")
	}
	n, ok := parseInt(a[2])
	if !ok {
		return errNotInt
	}
	i, ok := l.index(n)
	if !ok {
		return Err("ERR index out of range")
	}
	l.put(i, a[3])
	return OK
}

// cmdLRem: LREM key count element: count > 0 removes from the head,
// count < 0 from the tail, 0 every match.
func cmdLRem(c *ctx, a [][]byte) Value {
	count, ok := parseInt(a[2])
	if !ok {
		return errNotInt
	}
	l, wrong := c.openList(a[1], false)
	switch {
	case wrong:
		return errWrongType
	case l == nil:
		return Integer(0)
	}
	elems := l.rangeOf(0, l.len()-1)
	fromTail := count < 0
	if fromTail {
		count = -count // math.MinInt64 stays negative: no limit, as in Redis
		slices.Reverse(elems)
	}
	kept := elems[:0]
	var removed int64
	for _, e := range elems {
		if (count == 0 || removed != count) && bytes.Equal(e, a[3]) {
			removed++
			continue
		}
		kept = append(kept, e)
	}
	if removed == 0 {
		return Integer(0)
	}
	if fromTail {
		slices.Reverse(kept)
	}
	l.replace(kept)
	l.save()
	return Integer(removed)
}

func cmdLTrim(c *ctx, a [][]byte) Value {
	l, start, stop, bad := c.rangeArgs(a)
	switch {
	case bad != nil:
		return *bad
	case l == nil:
		return OK
	}
	from, to, ok := span(start, stop, l.len())
	if !ok {
		from, to = l.len(), l.len()-1
	}
	for range from {
		l.pop(true)
	}
	for l.len() > to-from+1 {
		l.pop(false)
	}
	l.save()
	return OK
}

// cmdLInsert: LINSERT key BEFORE|AFTER pivot element. The elements on the
// shorter side of the insertion point move by one.
func cmdLInsert(c *ctx, a [][]byte) Value {
	var after bool
	switch strings.ToUpper(string(a[2])) {
	case "AFTER":
		after = true
	case "BEFORE":
	default:
		return errSyntax
	}
	l, wrong := c.openList(a[1], false)
	switch {
	case wrong:
		return errWrongType
	case l == nil:
		return Integer(0)
	}
	p := int64(-1)
	cur := l.b.Cursor()
	var i int64
	for k, v := cur.Seek(l.posKey(l.head)); k != nil && bytes.HasPrefix(k, l.prefix); k, v = cur.Next() {
		if bytes.Equal(v, a[3]) {
			p = i
			break
		}
		i++
	}
	if p < 0 {
		return Integer(-1)
	}
	if after {
		p++
	}
	n := l.len()
	if p < n-p {
		for j := range p {
			v := l.at(j)
			must(l.b.Put(l.posKey(l.head+j-1), v))
		}
		l.head--
	} else {
		for j := n - 1; j >= p; j-- {
			v := l.at(j)
			must(l.b.Put(l.posKey(l.head+j+1), v))
		}
		l.tail++
	}
	l.put(p, a[4])
	l.save()
	return Integer(l.len())
}

// cmdLPos: LPOS key element [RANK rank] [COUNT num-matches] [MAXLEN len].
func cmdLPos(c *ctx, a [][]byte) Value {
	rank, count, maxlen := int64(1), int64(0), int64(0)
	hasCount := false
	for j := 3; j < len(a); j++ {
		opt := strings.ToUpper(string(a[j]))
		if j+1 >= len(a) || (opt != "RANK" && opt != "COUNT" && opt != "MAXLEN") {
			return errSyntax
		}
		j++
		n, ok := parseInt(a[j])
		switch opt {
		case "RANK":
			if !ok {
				return errNotInt
			}
			if n == 0 {
				return Err("ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list")
			}
			rank = n
		case "COUNT":
			if !ok || n < 0 {
				return Err("ERR COUNT can't be negative")
			}
			count, hasCount = n, true
		case "MAXLEN":
			if !ok || n < 0 {
				return Err("ERR MAXLEN can't be negative")
			}
			maxlen = n
		}
	}
	l, wrong := c.openList(a[1], false)
	switch {
	case wrong:
		return errWrongType
	case l == nil && hasCount:
		return Value{K: Array, A: []Value{}}
	case l == nil:
		return NilBulk
	}
	fromTail := rank < 0
	if fromTail {
		rank = -rank // math.MinInt64 stays negative, as in Redis
	}
	n := l.len()
	out := []Value{}
	cur := l.b.Cursor()
	k, v := cur.Seek(l.posKey(l.head))
	if fromTail {
		k, v = cur.Seek(l.posKey(l.tail))
		if k == nil {
			k, v = cur.Last()
		} else {
			k, v = cur.Prev()
		}
	}
	var matches int64
	for i := int64(0); k != nil && bytes.HasPrefix(k, l.prefix) && (maxlen == 0 || i < maxlen); i++ {
		if bytes.Equal(v, a[2]) {
			matches++
			if matches >= rank {
				pos := i
				if fromTail {
					pos = n - i - 1
				}
				if !hasCount {
					return Integer(pos)
				}
				out = append(out, Integer(pos))
				if count != 0 && matches-rank+1 >= count {
					break
				}
			}
		}
		if fromTail {
			k, v = cur.Prev()
		} else {
			k, v = cur.Next()
		}
	}
	if !hasCount {
		return NilBulk
	}
	return Value{K: Array, A: out}
}

func cmdLMove(c *ctx, a [][]byte) Value {
	from, ok1 := parseSide(a[3])
	to, ok2 := parseSide(a[4])
	if !ok1 || !ok2 {
		return errSyntax
	}
	return c.move(a[1], a[2], from, to)
}

// move pops an element off one end of src and pushes it onto one end of
// dst (LMOVE, RPOPLPUSH).
func (c *ctx) move(src, dst []byte, fromLeft, toLeft bool) Value {
	if !fits(dst, 8) {
		return errTooLong
	}
	s, wrong := c.openList(src, false)
	switch {
	case wrong:
		return errWrongType
	case s == nil:
		return NilBulk
	}
	if bytes.Equal(src, dst) {
		v := s.pop(fromLeft)
		s.push(toLeft, v)
		s.save()
		return BulkOf(v)
	}
	if m, ok := c.lookup(dst); ok && m.typ != TypeList {
		return errWrongType
	}
	checkKey(dst) // before the source changes
	v := s.pop(fromLeft)
	s.save()
	d, _ := c.openList(dst, true)
	d.push(toLeft, v)
	d.save()
	return BulkOf(v)
}

// cmdLMPop: LMPOP numkeys key [key ...] LEFT|RIGHT [COUNT count].
func cmdLMPop(c *ctx, a [][]byte) Value {
	numkeys, ok := parseInt(a[1])
	if !ok || numkeys < 1 {
		return Err("ERR numkeys should be greater than 0")
	}
	if numkeys >= int64(len(a))-2 {
		return errSyntax
	}
	keys := a[2 : 2+numkeys]
	left, ok := parseSide(a[2+numkeys])
	if !ok {
		return errSyntax
	}
	count, hasCount := int64(1), false
	for j := 3 + numkeys; j < int64(len(a)); j++ {
		if hasCount || j+1 >= int64(len(a)) || strings.ToUpper(string(a[j])) != "COUNT" {
			return errSyntax
		}
		j++
		n, ok := parseInt(a[j])
		if !ok || n < 1 {
			return Err("ERR count should be greater than 0")
		}
		count, hasCount = n, true
	}
	for _, k := range keys {
		l, wrong := c.openList(k, false)
		switch {
		case wrong:
			return errWrongType
		case l == nil:
			continue
		}
		out := l.popN(left, count)
		l.save()
		return ArrayOf(BulkOf(bytes.Clone(k)), bulks(out))
	}
	return Value{K: NullArray}
}
