package queue

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// EnqueueArgs is an enqueue (or a direct send, with Queue "@agent").
type EnqueueArgs struct {
	Queue    string   `msgpack:"q"`
	From     string   `msgpack:"f"`
	ID       string   `msgpack:"i"`
	Hash     [32]byte `msgpack:"h"` // SHA-256 of the envelope's canonical form
	Env      []byte   `msgpack:"e"`
	DelayMs  int64    `msgpack:"d,omitempty"`
	Priority uint8    `msgpack:"p,omitempty"`
}

// EnqueueResult is the outcome of an enqueue.
type EnqueueResult struct {
	Seq uint64
	Dup bool
}

func defaultSettings(name string) Settings {
	return Settings{
		MaxAttempts: DefaultMaxAttempts,
		BackoffMs:   append([]int64(nil), DefaultBackoffMs...),
		DLQ:         name + ".dlq",
	}
}

// ensureQueue loads a queue, creating it with defaults when it is new.
func (t *Tx) ensureQueue(name string) (*queueRec, error) {
	q, err := t.loadQueue(name)
	if err != nil || q != nil {
		return q, err
	}
	q = &queueRec{Settings: defaultSettings(name), Created: t.now}
	return q, t.saveQueue(name, q)
}

// Enqueue stores a message durably. A repeat of an envelope within the
// dedup window returns the original seq with Dup set; a repeat with other
// content or to another destination is ErrConflict. Both are checked before
// max_len.
func (t *Tx) Enqueue(a EnqueueArgs) (EnqueueResult, error) {
	if d, err := t.dedupCheck(a.From, a.ID, a.Queue, a.Hash); err != nil || d != nil {
		if d != nil {
			return EnqueueResult{Seq: d.Seq, Dup: true}, nil
		}
		return EnqueueResult{}, err
	}
	if a.Priority > 9 || a.DelayMs < 0 {
		return EnqueueResult{}, fmt.Errorf("%w: priority or delay out of range", ErrBadRequest)
	}
	q, err := t.ensureQueue(a.Queue)
	if err != nil {
		return EnqueueResult{}, err
	}
	if q.Settings.MaxLen > 0 && q.Ready+q.Delayed+q.Inflight >= q.Settings.MaxLen {
		return EnqueueResult{}, ErrFull
	}
	m := &msgRec{Pri: a.Priority}
	m.record(TimelineEvent{At: t.now, Kind: EvEnqueued, Who: a.From})
	seq, err := t.store(a.Queue, q, a.Env, m, a.DelayMs)
	if err != nil {
		return EnqueueResult{}, err
	}
	if err := t.saveQueue(a.Queue, q); err != nil {
		return EnqueueResult{}, err
	}
	if err := t.dedupRemember(a.From, a.ID, a.Queue, seq, a.Hash); err != nil {
		return EnqueueResult{}, err
	}
	return EnqueueResult{Seq: seq}, nil
}

// store appends a new message to queue q (whose record the caller
// saves): m brings its priority, dead-letter origin and timeline.
func (t *Tx) store(name string, q *queueRec, env []byte, m *msgRec, delayMs int64) (uint64, error) {
	q.NextSeq++
	seq := q.NextSeq
	m.Enqueued = t.now
	k := qkey(name, seq)
	if err := t.b(bucketBodies).Put(k, env); err != nil {
		return 0, err
	}
	if err := t.makeWaiting(name, q, seq, m, delayMs); err != nil {
		return 0, err
	}
	return seq, nil
}

// makeWaiting puts a message that is not leased into the ready set, or into
// the delayed set when delayMs > 0, and saves it.
func (t *Tx) makeWaiting(name string, q *queueRec, seq uint64, m *msgRec, delayMs int64) error {
	if delayMs > 0 {
		m.State = StateDelayed
		m.Due = t.now + delayMs
		q.Delayed++
		if err := t.b(bucketTimers).Put(timerKey(m.Due, name, seq), nil); err != nil {
			return err
		}
	} else {
		m.State = StateReady
		m.Due = 0
		q.Ready++
		if err := t.b(bucketReady).Put(readyKey(name, m.Pri, seq), nil); err != nil {
			return err
		}
		t.markDirty(name)
		t.markReadied(name)
	}
	return put(t.b(bucketMsgs), qkey(name, seq), m)
}

// DeclareArgs names the settings to change; nil fields keep their value.
type DeclareArgs struct {
	Queue       string  `msgpack:"q"`
	MaxAttempts *int    `msgpack:"ma,omitempty"`
	BackoffMs   []int64 `msgpack:"bo,omitempty"`
	SetBackoff  bool    `msgpack:"sb,omitempty"` // BackoffMs given (it may be empty)
	DLQ         *string `msgpack:"dlq,omitempty"`
	MaxLen      *int64  `msgpack:"ml,omitempty"` // 0 = unbounded
}

// Declare creates a queue or updates the settings it names, and returns the
// settings in force.
func (t *Tx) Declare(a DeclareArgs) (Settings, error) {
	if a.MaxAttempts != nil && *a.MaxAttempts < 1 {
		return Settings{}, fmt.Errorf("%w: max_attempts must be at least 1", ErrBadRequest)
	}
	if a.DLQ != nil && *a.DLQ == a.Queue {
		return Settings{}, fmt.Errorf("%w: a queue cannot be its own dead-letter queue", ErrBadRequest)
	}
	if a.MaxLen != nil && *a.MaxLen < 0 {
		return Settings{}, fmt.Errorf("%w: max_len must not be negative", ErrBadRequest)
	}
	q, err := t.ensureQueue(a.Queue)
	if err != nil {
		return Settings{}, err
	}
	s := &q.Settings
	if a.MaxAttempts != nil {
		s.MaxAttempts = *a.MaxAttempts
	}
	if a.SetBackoff || a.BackoffMs != nil {
		s.BackoffMs = append([]int64(nil), a.BackoffMs...)
	}
	if a.DLQ != nil {
		s.DLQ = *a.DLQ
	}
	if a.MaxLen != nil {
		s.MaxLen = *a.MaxLen
	}
	return *s, t.saveQueue(a.Queue, q)
}

// ReadInfo reports a queue's counters from a read transaction. An unknown
// queue reports zeros.
func ReadInfo(tx *bolt.Tx, name string) (Info, error) {
	q := &queueRec{}
	ok, err := get(tx.Bucket(bucketQueues), []byte(name), q)
	if err != nil || !ok {
		return Info{}, err
	}
	info := Info{Ready: q.Ready, Inflight: q.Inflight, Delayed: q.Delayed, Dead: q.Dead}
	c := tx.Bucket(bucketQCons).Cursor()
	p := prefix(name)
	for k, _ := c.Seek(p); k != nil && hasPrefix(k, p); k, _ = c.Next() {
		info.Consumers++
	}
	return info, nil
}

// ReadSettings returns a queue's settings, or false when it does not exist.
func ReadSettings(tx *bolt.Tx, name string) (Settings, bool, error) {
	q := &queueRec{}
	ok, err := get(tx.Bucket(bucketQueues), []byte(name), q)
	return q.Settings, ok, err
}

func hasPrefix(k, p []byte) bool {
	return len(k) >= len(p) && string(k[:len(p)]) == string(p)
}
