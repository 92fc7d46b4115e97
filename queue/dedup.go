package queue

import (
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
)

func dedupKey(from, id string) []byte {
	k := make([]byte, 0, len(from)+len(id)+1)
	k = append(k, from...)
	k = append(k, 0)
	return append(k, id...)
}

// dedupCheck looks an envelope up in the dedup window. It returns the first
// store when this is a faithful repeat, ErrConflict when the id was used
// for other content or another destination, and (nil, nil) when new.
func (t *Tx) dedupCheck(from, id, dest string, hash [32]byte) (*dedupRec, error) {
	d := &dedupRec{}
	ok, err := get(t.b(bucketDedup), dedupKey(from, id), d)
	if err != nil || !ok || d.At+DedupWindowMs <= t.now {
		return nil, err
	}
	if d.Dest != dest || d.Hash != hash {
		return nil, ErrConflict
	}
	return d, nil
}

// dedupRemember records the first store of an envelope.
func (t *Tx) dedupRemember(from, id, dest string, seq uint64, hash [32]byte) error {
	k := dedupKey(from, id)
	old := &dedupRec{}
	if ok, err := get(t.b(bucketDedup), k, old); err != nil {
		return err
	} else if ok {
		// An expired entry not yet collected: drop its expiry index entry.
		if err := t.b(bucketDedupExp).Delete(append(u64(uint64(old.At)), k...)); err != nil {
			return err
		}
	}
	if err := put(t.b(bucketDedup), k, &dedupRec{Dest: dest, Seq: seq, Hash: hash, At: t.now}); err != nil {
		return err
	}
	return t.b(bucketDedupExp).Put(append(u64(uint64(t.now)), k...), nil)
}

// dedupExpire forgets entries whose window has passed.
func (t *Tx) dedupExpire() error {
	var keys [][]byte
	c := t.b(bucketDedupExp).Cursor()
	for k, _ := c.First(); k != nil && int64(binary.BigEndian.Uint64(k))+DedupWindowMs <= t.now; k, _ = c.Next() {
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, k := range keys {
		if err := t.b(bucketDedupExp).Delete(k); err != nil {
			return err
		}
		if err := t.b(bucketDedup).Delete(k[8:]); err != nil {
			return err
		}
	}
	return nil
}

// dedupSlackMs is how late dedup entries may be forgotten.
const dedupSlackMs = 5000

// NextDeadline is the earliest time at which Expire has work: a delayed
// message due, a lease ending, or a dedup entry to forget; 0 when none.
func NextDeadline(tx *bolt.Tx) int64 {
	var next int64
	if k, _ := tx.Bucket(bucketTimers).Cursor().First(); k != nil {
		next = int64(binary.BigEndian.Uint64(k))
	}
	if k, _ := tx.Bucket(bucketDedupExp).Cursor().First(); k != nil {
		// Forgetting dedup entries need not be prompt: batching them keeps
		// an idle cluster from ticking for every expiring entry.
		at := int64(binary.BigEndian.Uint64(k)) + DedupWindowMs + dedupSlackMs
		if next == 0 || at < next {
			next = at
		}
	}
	return next
}
