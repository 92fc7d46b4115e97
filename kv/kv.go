package kv

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Buckets of state.db this package owns.
var (
	bucketMeta = []byte("kvmeta") // dbKey(key) -> type(1) expire_at_ms(8, 0: none)
	bucketStr  = []byte("kvstr")  // dbKey(key) -> string value
	bucketExp  = []byte("kvexp")  // expire_at_ms(8) key -> nil

	// A hash: its fields by name, and by a per-hash sequence number given
	// at a field's first insertion, which is the order HGETALL answers in.
	bucketHash  = []byte("kvhash")  // coll(key) field -> seq(8) value
	bucketHOrd  = []byte("kvhord")  // coll(key) seq(8) -> field
	bucketHMeta = []byte("kvhmeta") // dbKey(key) -> count(8) next_seq(8)

	// A list: its elements at positions head..tail-1, stored so that
	// byte order is position order.
	bucketList  = []byte("kvlist")  // coll(key) pos(8, sign bit flipped) -> element
	bucketLMeta = []byte("kvlmeta") // dbKey(key) -> head(8) tail(8)

	// A stream: its entries by id, and its counters (stream.go); its
	// consumer groups are in stream_groups.go.
	bucketStream = []byte("kvstream") // coll(key) ms(8) seq(8) -> fields
	bucketXMeta  = []byte("kvxmeta")  // dbKey(key) -> last(16) length(8) added(8) max_deleted(16) first(16)
)

// Buckets lists them for CreateBuckets and dumps.
var Buckets = [][]byte{bucketMeta, bucketStr, bucketExp, bucketHash, bucketHOrd, bucketHMeta, bucketList, bucketLMeta, bucketStream, bucketXMeta,
	bucketXGroup, bucketXPEL, bucketXCons, bucketXCPEL}

// CreateBuckets makes sure every bucket exists.
func CreateBuckets(tx *bolt.Tx) error {
	for _, b := range Buckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	return nil
}

// Type is the type of a key's value.
type Type byte

// Key types; the byte values are stored.
const (
	TypeNone   Type = 0
	TypeString Type = 's'
	TypeHash   Type = 'h'
	TypeList   Type = 'l'
	TypeStream Type = 'x'
)

func (t Type) String() string {
	switch t {
	case TypeString:
		return "string"
	case TypeHash:
		return "hash"
	case TypeList:
		return "list"
	case TypeStream:
		return "stream"
	}
	return "none"
}

type meta struct {
	typ    Type
	expire int64 // unix ms; 0: none
}

func encodeMeta(m meta) []byte {
	b := make([]byte, 9)
	b[0] = byte(m.typ)
	binary.BigEndian.PutUint64(b[1:], uint64(m.expire))
	return b
}

// ctx is one command's view: the transaction, the command's time, and
// whether it may write (reads run on a read-only transaction).
type ctx struct {
	tx    *bolt.Tx
	now   int64
	write bool
}

// lookup returns a live key's metadata; an expired key is absent (and
// removed when the command may write).
func (c *ctx) lookup(key []byte) (meta, bool) {
	v := c.tx.Bucket(bucketMeta).Get(dbKey(key))
	if len(v) != 9 {
		return meta{}, false
	}
	m := meta{typ: Type(v[0]), expire: int64(binary.BigEndian.Uint64(v[1:]))}
	if m.expire != 0 && m.expire <= c.now {
		if c.write {
			c.del(key, m)
		}
		return meta{}, false
	}
	return m, true
}

// badKey is raised by setMeta for a key state.db cannot hold, before
// anything of it is written; Exec turns it into its error reply.
type badKey struct{ reply Value }

// maxKeyLen leaves room in an entry key for the length prefix of
// collKey and an 8-byte position or expiry time.
const maxKeyLen = bolt.MaxKeySize - 12

// checkKey raises badKey unless state.db can hold key.
func checkKey(key []byte) {
	if len(key) > maxKeyLen {
		panic(badKey{errTooLong})
	}
}

// dbKey is a key as the per-key buckets hold it: behind one constant
// byte, so that the empty key, which Redis allows, is not empty there.
func dbKey(key []byte) []byte {
	return append([]byte{'k'}, key...)
}

// setMeta stores a key's metadata and its expiry index entry.
func (c *ctx) setMeta(key []byte, old, m meta, existed bool) {
	checkKey(key)
	if existed && old.expire != 0 && old.expire != m.expire {
		must(c.tx.Bucket(bucketExp).Delete(expKey(old.expire, key)))
	}
	if m.expire != 0 && (!existed || old.expire != m.expire) {
		must(c.tx.Bucket(bucketExp).Put(expKey(m.expire, key), nil))
	}
	must(c.tx.Bucket(bucketMeta).Put(dbKey(key), encodeMeta(m)))
}

// del removes a key and everything of its value.
func (c *ctx) del(key []byte, m meta) {
	switch m.typ {
	case TypeString:
		must(c.tx.Bucket(bucketStr).Delete(dbKey(key)))
	case TypeHash:
		p := collKey(key)
		deletePrefix(c.tx.Bucket(bucketHash), p)
		deletePrefix(c.tx.Bucket(bucketHOrd), p)
		must(c.tx.Bucket(bucketHMeta).Delete(dbKey(key)))
	case TypeList:
		deletePrefix(c.tx.Bucket(bucketList), collKey(key))
		must(c.tx.Bucket(bucketLMeta).Delete(dbKey(key)))
	case TypeStream:
		deletePrefix(c.tx.Bucket(bucketStream), collKey(key))
		deleteGroups(c.tx, collKey(key))
		must(c.tx.Bucket(bucketXMeta).Delete(dbKey(key)))
	}
	if m.expire != 0 {
		must(c.tx.Bucket(bucketExp).Delete(expKey(m.expire, key)))
	}
	must(c.tx.Bucket(bucketMeta).Delete(dbKey(key)))
}

// collKey is the prefix of a hash's or list's entries: the key's length
// (uint32) and the key, so that no key's prefix is another key's.
func collKey(key []byte) []byte {
	b := make([]byte, 4, 4+len(key)+8)
	binary.BigEndian.PutUint32(b, uint32(len(key)))
	return append(b, key...)
}

// deletePrefix removes every entry of b whose key starts with p.
func deletePrefix(b *bolt.Bucket, p []byte) {
	var ks [][]byte
	cur := b.Cursor()
	for k, _ := cur.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = cur.Next() {
		ks = append(ks, bytes.Clone(k))
	}
	for _, k := range ks {
		must(b.Delete(k))
	}
}

func expKey(at int64, key []byte) []byte {
	b := make([]byte, 8, 8+len(key))
	binary.BigEndian.PutUint64(b, uint64(at))
	return append(b, key...)
}

// must panics on a bbolt failure: the FSM turns it into a stop of the
// replica rather than a divergent state.
func must(err error) {
	if err != nil {
		panic(fmt.Sprintf("kv: %v", err))
	}
}

// Expire removes up to limit keys whose time has come, in expiry order:
// the same keys at the same entry on every node.
func Expire(tx *bolt.Tx, now int64, limit int) error {
	c := &ctx{tx: tx, now: now, write: true}
	cur := tx.Bucket(bucketExp).Cursor()
	var due [][]byte
	for k, _ := cur.First(); k != nil && len(due) < limit; k, _ = cur.Next() {
		if int64(binary.BigEndian.Uint64(k[:8])) > now {
			break
		}
		due = append(due, bytes.Clone(k[8:]))
	}
	for _, key := range due {
		c.lookup(key) // removes it, as it is expired
	}
	return nil
}

// spec describes a command: its arity as Redis counts it (the name
// included; negative: at least), whether it writes, and its function.
type spec struct {
	arity int
	write bool
	fn    func(c *ctx, args [][]byte) Value
}

var commands = map[string]spec{}

// Lookup reports whether name (lowercase) is a keyspace command and
// whether it writes. Writes go through the Raft log; reads run on a
// node's applied state.
func Lookup(name string) (known, write bool) {
	s, ok := commands[name]
	return ok, s.write
}

// Exec runs a keyspace command (args[0] is its name, any case) at time
// now. write must be true for a write command, which then runs on a write
// transaction applied from the log; a read runs on any transaction.
func Exec(tx *bolt.Tx, now int64, args [][]byte, write bool) (v Value) {
	name := strings.ToLower(string(args[0]))
	s, ok := commands[name]
	if !ok {
		return ErrUnknown(string(args[0]), args[1:])
	}
	if (s.arity > 0 && len(args) != s.arity) || (s.arity < 0 && len(args) < -s.arity) {
		return ErrArity(name)
	}
	if v, ok := checkSub(name, args); !ok {
		return v
	}
	if s.write && !write {
		return Err("ERR internal: write command on a read path")
	}
	if s.write {
		// Every key a write names is checked before any is written: a
		// multi-key write (MSET) is refused whole, not half done.
		if keys, whole := KeysOf(args); !whole {
			for _, k := range keys {
				if len(k) > maxKeyLen {
					return errTooLong
				}
			}
		}
	}
	defer func() {
		if r := recover(); r != nil {
			b, ok := r.(badKey)
			if !ok {
				panic(r)
			}
			v = b.reply
		}
	}()
	return s.fn(&ctx{tx: tx, now: now, write: write}, args)
}

// addMs adds a relative expiry to now, refusing overflow.
func addMs(now, ms int64) (int64, bool) {
	if ms > math.MaxInt64-now {
		return 0, false
	}
	return now + ms, true
}
