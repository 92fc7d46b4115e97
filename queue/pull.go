package queue

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/vmihailenco/msgpack/v5"
	bolt "go.etcd.io/bbolt"
)

// Pulling: leases taken by a holder that is not a consumer. The Redis
// face's XREADGROUP pulls messages for a Redis consumer ("redis:NAME"),
// which is no connection: its leases end by XACK or when they lapse,
// never when a connection closes or a node goes down.

// Message is a stored message as a reader sees it.
type Message struct {
	Seq        uint64
	Enqueued   int64
	State      uint8
	Attempts   int
	Conn       string // the lease holder, when inflight
	LeasedAt   int64
	LeaseUntil int64
	Dead       *DeadInfo // where a dead letter came from, and why
	Env        []byte
	// TimelineDropped counts the events left out of its timeline (see
	// Timeline) between the first and the latest.
	TimelineDropped int

	history []byte
}

// Timeline is what happened to the message, oldest first: its first
// event and the latest ones, TimelineDropped events between them left
// out. An error means the stored timeline cannot be read.
func (m Message) Timeline() ([]TimelineEvent, error) { return decodeTimeline(m.history) }

// Pull leases up to max ready messages of an existing queue to holder for
// leaseMs each, highest priority then oldest first, and returns them.
func (t *Tx) Pull(name, holder string, max int, leaseMs int64) ([]Message, error) {
	q, err := t.loadQueue(name)
	if err != nil || q == nil {
		return nil, err
	}
	var out []Message
	ready := t.b(bucketReady).Cursor()
	p := prefix(name)
	for len(out) < max && q.Ready > 0 {
		k, _ := ready.Seek(p)
		if k == nil || !hasPrefix(k, p) {
			return nil, fmt.Errorf("queue %q counts %d ready messages but has none", name, q.Ready)
		}
		seq := binary.BigEndian.Uint64(k[len(p)+1:])
		if err := ready.Delete(); err != nil {
			return nil, err
		}
		q.Ready--
		m, err := t.leaseTo(name, q, seq, 0, holder, leaseMs)
		if err != nil {
			return nil, err
		}
		out = append(out, message(seq, m, t.b(bucketBodies).Get(qkey(name, seq))))
	}
	return out, t.saveQueue(name, q)
}

// AckHeld acknowledges message seq of a queue, enqueued at enqueued, when
// it is leased to a holder whose name starts with holderPrefix; ok is
// false when it is not.
func (t *Tx) AckHeld(name string, seq uint64, enqueued int64, holderPrefix string) (ok bool, err error) {
	m := &msgRec{}
	if found, err := get(t.b(bucketMsgs), qkey(name, seq), m); err != nil || !found {
		return false, err
	}
	if m.State != StateInflight || m.Enqueued != enqueued || !strings.HasPrefix(m.Conn, holderPrefix) {
		return false, nil
	}
	return true, t.Ack(SettleArgs{Queue: name, Seq: seq, Attempt: m.Attempts, Conn: m.Conn})
}

// Exists reports whether a queue exists.
func Exists(tx *bolt.Tx, name string) bool {
	return tx.Bucket(bucketQueues).Get([]byte(name)) != nil
}

// Create makes a queue with the default settings unless it exists, and
// reports whether it made it.
func (t *Tx) Create(name string) (bool, error) {
	if q, err := t.loadQueue(name); err != nil || q != nil {
		return false, err
	}
	_, err := t.ensureQueue(name)
	return err == nil, err
}

// LastSeq is the sequence number the queue gave its newest message (0
// for none yet).
func LastSeq(tx *bolt.Tx, name string) (uint64, error) {
	q := &queueRec{}
	_, err := get(tx.Bucket(bucketQueues), []byte(name), q)
	return q.NextSeq, err
}

// ReadMessages calls fn for the stored messages of a queue in sequence
// order (reversed with rev) until it returns false.
func ReadMessages(tx *bolt.Tx, name string, rev bool, fn func(Message) bool) error {
	p := prefix(name)
	c := tx.Bucket(bucketMsgs).Cursor()
	bodies := tx.Bucket(bucketBodies)
	var k, v []byte
	if rev {
		end := append([]byte(name), 1)
		if k, v = c.Seek(end); k == nil || !hasPrefix(k, p) {
			k, v = c.Prev()
		}
	} else {
		k, v = c.Seek(p)
	}
	for ; k != nil && hasPrefix(k, p); k, v = step(c, rev) {
		m := &msgRec{}
		if err := msgpack.Unmarshal(v, m); err != nil {
			return fmt.Errorf("decode message %q: %w", k, err)
		}
		seq := binary.BigEndian.Uint64(k[len(p):])
		if !fn(message(seq, m, bodies.Get(k))) {
			return nil
		}
	}
	return nil
}

func step(c *bolt.Cursor, rev bool) ([]byte, []byte) {
	if rev {
		return c.Prev()
	}
	return c.Next()
}

// ReadHeld calls fn for the messages of a queue leased to holder, in
// sequence order, until it returns false.
func ReadHeld(tx *bolt.Tx, holder, name string, fn func(Message) bool) error {
	p := connKey(holder, name, 0)
	p = p[:len(p)-8]
	c := tx.Bucket(bucketByConn).Cursor()
	msgs, bodies := tx.Bucket(bucketMsgs), tx.Bucket(bucketBodies)
	for k, _ := c.Seek(p); k != nil && hasPrefix(k, p); k, _ = c.Next() {
		seq := binary.BigEndian.Uint64(k[len(p):])
		m := &msgRec{}
		if ok, err := get(msgs, qkey(name, seq), m); err != nil || !ok {
			return fmt.Errorf("lease of %s/%d has no message (%v)", name, seq, err)
		}
		if !fn(message(seq, m, bodies.Get(qkey(name, seq)))) {
			return nil
		}
	}
	return nil
}

func message(seq uint64, m *msgRec, env []byte) Message {
	return Message{Seq: seq, Enqueued: m.Enqueued, State: m.State, Attempts: m.Attempts, Conn: m.Conn,
		LeasedAt: m.LeasedAt, LeaseUntil: m.LeaseUntil, Dead: m.Dead, Env: append([]byte(nil), env...),
		TimelineDropped: m.Dropped, history: m.History}
}
