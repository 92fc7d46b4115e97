package kv

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
)

// Digest is a SHA-256 over everything a key holds at time now: its type
// and expiry, its value, and for a stream its counters and entries but
// not its consumer groups (as in Redis, where group commands do not
// touch watched keys). WATCH takes it when a client watches a key, and EXEC
// runs only if every watched key's digest is the same when the FSM
// applies it: a change anywhere in between, by any client on any node,
// aborts the transaction. An absent or expired key has the digest of no
// data.
func Digest(tx *bolt.Tx, now int64, key []byte) [32]byte {
	h := sha256.New()
	c := &ctx{tx: tx, now: now}
	m, ok := c.lookup(key)
	if !ok {
		return [32]byte(h.Sum(nil))
	}
	h.Write(encodeMeta(m))
	dk, ck := dbKey(key), collKey(key)
	for _, b := range [][]byte{bucketStr, bucketHMeta, bucketLMeta, bucketXMeta} {
		v := tx.Bucket(b).Get(dk)
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(v))))
		h.Write(v)
	}
	for _, b := range [][]byte{bucketHash, bucketHOrd, bucketList, bucketStream} {
		h.Write(append([]byte{'b'}, b...))
		cur := tx.Bucket(b).Cursor()
		for k, v := cur.Seek(ck); k != nil && bytes.HasPrefix(k, ck); k, v = cur.Next() {
			h.Write([]byte{'e'})
			h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(k))))
			h.Write(k)
			h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(v))))
			h.Write(v)
		}
	}
	return [32]byte(h.Sum(nil))
}
