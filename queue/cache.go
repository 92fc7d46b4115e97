package queue

import (
	"encoding/binary"
	"sort"
)

// The records a command touches most (queues and consumers) are decoded
// once per Tx and written back once per command, in key order, by Finish.
// Every access to them goes through the methods below.

type recCache struct {
	queues map[string]*queueRec
	dirtyQ map[string]bool
	cons   map[uint64]*consumerRec // nil value: known not to exist
	dirtyC map[uint64]bool
	qcons  map[string][]uint64 // consumer ids of a queue, ascending
}

func (t *Tx) cache() *recCache {
	if t.rc == nil {
		t.rc = &recCache{
			queues: map[string]*queueRec{},
			dirtyQ: map[string]bool{},
			cons:   map[uint64]*consumerRec{},
			dirtyC: map[uint64]bool{},
			qcons:  map[string][]uint64{},
		}
	}
	return t.rc
}

// loadQueue returns a queue's record, or nil when it does not exist.
func (t *Tx) loadQueue(name string) (*queueRec, error) {
	c := t.cache()
	if q, ok := c.queues[name]; ok {
		return q, nil
	}
	q := &queueRec{}
	ok, err := get(t.b(bucketQueues), []byte(name), q)
	if err != nil || !ok {
		return nil, err
	}
	c.queues[name] = q
	return q, nil
}

// saveQueue marks a queue's record for writing at the end of the command.
func (t *Tx) saveQueue(name string, q *queueRec) error {
	c := t.cache()
	c.queues[name] = q
	c.dirtyQ[name] = true
	return nil
}

// consumer returns a consumer's record, or nil when it does not exist.
func (t *Tx) consumer(id uint64) (*consumerRec, error) {
	c := t.cache()
	if rec, ok := c.cons[id]; ok {
		return rec, nil
	}
	rec := &consumerRec{}
	ok, err := get(t.b(bucketConsumers), u64(id), rec)
	if err != nil {
		return nil, err
	}
	if !ok {
		rec = nil
	}
	c.cons[id] = rec
	return rec, nil
}

// saveConsumer marks a consumer's record for writing.
func (t *Tx) saveConsumer(id uint64, rec *consumerRec) {
	c := t.cache()
	c.cons[id] = rec
	c.dirtyC[id] = true
}

// addConsumer stores a new consumer and indexes it under its queue.
func (t *Tx) addConsumer(id uint64, rec *consumerRec) error {
	if err := put(t.b(bucketConsumers), u64(id), rec); err != nil {
		return err
	}
	if err := t.b(bucketQCons).Put(qkey(rec.Queue, id), nil); err != nil {
		return err
	}
	c := t.cache()
	c.cons[id] = rec
	delete(c.qcons, rec.Queue)
	return nil
}

// deleteConsumer removes a consumer and its index entry.
func (t *Tx) deleteConsumer(id uint64, rec *consumerRec) error {
	if err := t.b(bucketConsumers).Delete(u64(id)); err != nil {
		return err
	}
	if err := t.b(bucketQCons).Delete(qkey(rec.Queue, id)); err != nil {
		return err
	}
	c := t.cache()
	c.cons[id] = nil
	delete(c.dirtyC, id)
	delete(c.qcons, rec.Queue)
	return nil
}

// consumerIDs lists a queue's consumers in ascending id order.
func (t *Tx) consumerIDs(name string) []uint64 {
	c := t.cache()
	if ids, ok := c.qcons[name]; ok {
		return ids
	}
	var ids []uint64
	cur := t.b(bucketQCons).Cursor()
	p := prefix(name)
	for k, _ := cur.Seek(p); k != nil && hasPrefix(k, p); k, _ = cur.Next() {
		ids = append(ids, binary.BigEndian.Uint64(k[len(p):]))
	}
	c.qcons[name] = ids
	return ids
}

// flushRecords writes the changed queue and consumer records, in key order.
func (t *Tx) flushRecords() error {
	c := t.rc
	if c == nil {
		return nil
	}
	if len(c.dirtyQ) > 0 {
		names := make([]string, 0, len(c.dirtyQ))
		for n := range c.dirtyQ {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			if err := put(t.b(bucketQueues), []byte(n), c.queues[n]); err != nil {
				return err
			}
		}
		clear(c.dirtyQ)
	}
	if len(c.dirtyC) > 0 {
		ids := make([]uint64, 0, len(c.dirtyC))
		for id := range c.dirtyC {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		for _, id := range ids {
			if rec := c.cons[id]; rec != nil {
				if err := put(t.b(bucketConsumers), u64(id), rec); err != nil {
					return err
				}
			}
		}
		clear(c.dirtyC)
	}
	return nil
}
