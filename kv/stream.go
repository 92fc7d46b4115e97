package kv

import (
	"bytes"
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
)

// A stream's storage: its entries in id order and its counters.
// Streams have no consumer groups yet (docs/redis.md); an emptied stream
// stays, as in Redis.

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
