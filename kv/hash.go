package kv

import (
	"bytes"
	"encoding/binary"
	"math"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

func init() {
	commands["hset"] = spec{-4, true, cmdHSet("hset", false)}
	commands["hmset"] = spec{-4, true, cmdHSet("hmset", true)}
	commands["hsetnx"] = spec{4, true, cmdHSetNX}
	commands["hget"] = spec{3, false, cmdHGet}
	commands["hmget"] = spec{-3, false, cmdHMGet}
	commands["hdel"] = spec{-3, true, cmdHDel}
	commands["hgetall"] = spec{2, false, cmdHGetAll(true, true)}
	commands["hkeys"] = spec{2, false, cmdHGetAll(true, false)}
	commands["hvals"] = spec{2, false, cmdHGetAll(false, true)}
	commands["hexists"] = spec{3, false, cmdHExists}
	commands["hlen"] = spec{2, false, cmdHLen}
	commands["hstrlen"] = spec{3, false, cmdHStrLen}
	commands["hincrby"] = spec{4, true, cmdHIncrBy}
}

// errTooLong answers a key, field or key and field together longer than
// an entry of state.db may be. Redis has no such limit.
var errTooLong = Err("ERR key or field too long")

// fits reports whether key and a suffix of n bytes make a storable entry
// key.
func fits(key []byte, n int) bool {
	return 4+len(key)+n <= bolt.MaxKeySize
}

// hash is one hash of the keyspace, open for a command.
type hash struct {
	c      *ctx
	key    []byte
	prefix []byte
	m      meta
	count  int64 // fields
	next   int64 // sequence number of the next new field
	fields *bolt.Bucket
	order  *bolt.Bucket
}

// openHash returns the live hash at key; wrong is set when key holds
// another type. With create, an absent hash is made (empty: the caller
// adds a field before the command ends).
func (c *ctx) openHash(key []byte, create bool) (h *hash, wrong bool) {
	m, ok := c.lookup(key)
	if ok && m.typ != TypeHash {
		return nil, true
	}
	if !ok && !create {
		return nil, false
	}
	h = &hash{c: c, key: key, prefix: collKey(key), m: m,
		fields: c.tx.Bucket(bucketHash), order: c.tx.Bucket(bucketHOrd)}
	if !ok {
		h.m = meta{typ: TypeHash}
		c.setMeta(key, meta{}, h.m, false)
		return h, false
	}
	if v := c.tx.Bucket(bucketHMeta).Get(dbKey(key)); len(v) == 16 {
		h.count = int64(binary.BigEndian.Uint64(v))
		h.next = int64(binary.BigEndian.Uint64(v[8:]))
	}
	return h, false
}

func (h *hash) fieldKey(field []byte) []byte {
	return append(bytes.Clone(h.prefix), field...)
}

func (h *hash) seqKey(seq int64) []byte {
	return binary.BigEndian.AppendUint64(bytes.Clone(h.prefix), uint64(seq))
}

// get returns a field's value (valid until the transaction changes).
func (h *hash) get(field []byte) ([]byte, bool) {
	v := h.fields.Get(h.fieldKey(field))
	if len(v) < 8 {
		return nil, false
	}
	return v[8:], true
}

// set stores a field; a new field goes last in the hash's order, an
// existing one keeps its place. It reports whether the field is new.
func (h *hash) set(field, val []byte) bool {
	fk := h.fieldKey(field)
	seq := h.next
	old := h.fields.Get(fk)
	if len(old) >= 8 {
		seq = int64(binary.BigEndian.Uint64(old))
	} else {
		h.next++
		h.count++
		must(h.order.Put(h.seqKey(seq), bytes.Clone(field)))
	}
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(val)), uint64(seq))
	must(h.fields.Put(fk, append(v, val...)))
	return len(old) < 8
}

// remove deletes a field, reporting whether it was there.
func (h *hash) remove(field []byte) bool {
	fk := h.fieldKey(field)
	old := h.fields.Get(fk)
	if len(old) < 8 {
		return false
	}
	must(h.order.Delete(h.seqKey(int64(binary.BigEndian.Uint64(old)))))
	must(h.fields.Delete(fk))
	h.count--
	return true
}

// save stores the hash's counters, or deletes the key when no field is
// left.
func (h *hash) save() {
	if h.count == 0 {
		h.c.del(h.key, h.m)
		return
	}
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 16), uint64(h.count))
	must(h.c.tx.Bucket(bucketHMeta).Put(dbKey(h.key), binary.BigEndian.AppendUint64(v, uint64(h.next))))
}

// each calls fn with every field and value (copies), in insertion order.
func (h *hash) each(fn func(field, val []byte)) {
	cur := h.order.Cursor()
	for k, f := cur.Seek(h.prefix); k != nil && bytes.HasPrefix(k, h.prefix); k, f = cur.Next() {
		v, _ := h.get(f)
		fn(bytes.Clone(f), bytes.Clone(v))
	}
}

// fieldsFit reports whether every field argument makes a storable entry.
func fieldsFit(key []byte, fields [][]byte) bool {
	for _, f := range fields {
		if !fits(key, len(f)) || !fits(key, 8) {
			return false
		}
	}
	return true
}

// cmdHSet: HSET key field value [field value ...] (HMSET answers OK).
func cmdHSet(name string, ok bool) func(c *ctx, a [][]byte) Value {
	return func(c *ctx, a [][]byte) Value {
		if len(a)%2 == 1 {
			return ErrArity(name)
		}
		var fields [][]byte
		for i := 2; i < len(a); i += 2 {
			fields = append(fields, a[i])
		}
		if !fieldsFit(a[1], fields) {
			return errTooLong
		}
		h, wrong := c.openHash(a[1], true)
		if wrong {
			return errWrongType
		}
		var added int64
		for i := 2; i < len(a); i += 2 {
			if h.set(a[i], a[i+1]) {
				added++
			}
		}
		h.save()
		if ok {
			return OK
		}
		return Integer(added)
	}
}

func cmdHSetNX(c *ctx, a [][]byte) Value {
	if !fieldsFit(a[1], a[2:3]) {
		return errTooLong
	}
	h, wrong := c.openHash(a[1], true)
	if wrong {
		return errWrongType
	}
	if _, ok := h.get(a[2]); ok {
		return Integer(0)
	}
	h.set(a[2], a[3])
	h.save()
	return Integer(1)
}

func cmdHGet(c *ctx, a [][]byte) Value {
	h, wrong := c.openHash(a[1], false)
	if wrong {
		return errWrongType
	}
	if h == nil {
		return NilBulk
	}
	if v, ok := h.get(a[2]); ok {
		return BulkOf(bytes.Clone(v))
	}
	return NilBulk
}

func cmdHMGet(c *ctx, a [][]byte) Value {
	h, wrong := c.openHash(a[1], false)
	if wrong {
		return errWrongType
	}
	out := make([]Value, 0, len(a)-2)
	for _, f := range a[2:] {
		v, ok := []byte(nil), false
		if h != nil {
			v, ok = h.get(f)
		}
		if ok {
			out = append(out, BulkOf(bytes.Clone(v)))
		} else {
			out = append(out, NilBulk)
		}
	}
	return ArrayOf(out...)
}

func cmdHDel(c *ctx, a [][]byte) Value {
	h, wrong := c.openHash(a[1], false)
	if wrong {
		return errWrongType
	}
	if h == nil {
		return Integer(0)
	}
	var n int64
	for _, f := range a[2:] {
		if h.remove(f) {
			n++
		}
	}
	h.save()
	return Integer(n)
}

// cmdHGetAll answers HGETALL (a map), HKEYS and HVALS (arrays).
func cmdHGetAll(keys, vals bool) func(c *ctx, a [][]byte) Value {
	kind := Array
	if keys && vals {
		kind = Map
	}
	return func(c *ctx, a [][]byte) Value {
		h, wrong := c.openHash(a[1], false)
		if wrong {
			return errWrongType
		}
		out := Value{K: kind, A: []Value{}}
		if h == nil {
			return out
		}
		h.each(func(f, v []byte) {
			if keys {
				out.A = append(out.A, BulkOf(f))
			}
			if vals {
				out.A = append(out.A, BulkOf(v))
			}
		})
		return out
	}
}

func cmdHExists(c *ctx, a [][]byte) Value {
	h, wrong := c.openHash(a[1], false)
	if wrong {
		return errWrongType
	}
	if h == nil {
		return Integer(0)
	}
	if _, ok := h.get(a[2]); ok {
		return Integer(1)
	}
	return Integer(0)
}

func cmdHLen(c *ctx, a [][]byte) Value {
	h, wrong := c.openHash(a[1], false)
	if wrong {
		return errWrongType
	}
	if h == nil {
		return Integer(0)
	}
	return Integer(h.count)
}

func cmdHStrLen(c *ctx, a [][]byte) Value {
	h, wrong := c.openHash(a[1], false)
	if wrong {
		return errWrongType
	}
	if h == nil {
		return Integer(0)
	}
	v, _ := h.get(a[2])
	return Integer(int64(len(v)))
}

// cmdHIncrBy: HINCRBY key field increment. A missing field counts as 0.
func cmdHIncrBy(c *ctx, a [][]byte) Value {
	by, ok := parseInt(a[3])
	if !ok {
		return errNotInt
	}
	if !fieldsFit(a[1], a[2:3]) {
		return errTooLong
	}
	h, wrong := c.openHash(a[1], true)
	if wrong {
		return errWrongType
	}
	var cur int64
	if v, ok := h.get(a[2]); ok {
		n, valid := parseInt(v)
		if !valid {
			h.save()
			return Err("ERR hash value is not an integer")
		}
		cur = n
	}
	if (by < 0 && cur < 0 && by < math.MinInt64-cur) || (by > 0 && cur > 0 && by > math.MaxInt64-cur) {
		h.save()
		return errOverflow
	}
	cur += by
	h.set(a[2], []byte(strconv.FormatInt(cur, 10)))
	h.save()
	return Integer(cur)
}
