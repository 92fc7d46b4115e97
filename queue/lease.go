package queue

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"

	"github.com/vmihailenco/msgpack/v5"
)

// ConsumeArgs opens a consumer for a connection.
type ConsumeArgs struct {
	Queue    string `msgpack:"q"`
	Conn     string `msgpack:"c"`
	Prefetch int    `msgpack:"p"`
	LeaseMs  int64  `msgpack:"l"`
}

// Consume registers a consumer and returns its id. Deliveries follow in the
// same command's effects, after the reply.
func (t *Tx) Consume(a ConsumeArgs) (uint64, error) {
	if a.Prefetch < 1 || a.LeaseMs < 1 {
		return 0, fmt.Errorf("%w: prefetch and lease_ms must be positive", ErrBadRequest)
	}
	if _, err := t.ensureQueue(a.Queue); err != nil {
		return 0, err
	}
	id, err := t.nextID("consumer")
	if err != nil {
		return 0, err
	}
	c := &consumerRec{Queue: a.Queue, Node: ConnNode(a.Conn), Conn: a.Conn, Prefetch: a.Prefetch, LeaseMs: a.LeaseMs}
	if err := t.addConsumer(id, c); err != nil {
		return 0, err
	}
	t.markDirty(a.Queue)
	return id, nil
}

// dispatch leases ready messages of a queue to its consumers with spare
// capacity, round-robin in consumer id order starting after the last one
// served, highest priority then lowest seq first.
func (t *Tx) dispatch(name string) error {
	q, err := t.loadQueue(name)
	if err != nil || q == nil || q.Ready == 0 {
		return err
	}
	ids := t.consumerIDs(name)
	if len(ids) == 0 {
		return nil
	}
	recs := make([]*consumerRec, len(ids))
	for i, id := range ids {
		if recs[i], err = t.consumer(id); err != nil {
			return err
		}
		if recs[i] == nil {
			return fmt.Errorf("consumer %d of %q: missing record", id, name)
		}
	}
	// Start after the consumer served last.
	start := 0
	for i, id := range ids {
		if id > q.RR {
			start = i
			break
		}
	}
	ready := t.b(bucketReady).Cursor()
	p := prefix(name)
	idle := 0
	for i := start; q.Ready > 0 && idle < len(ids); i = (i + 1) % len(ids) {
		c := recs[i]
		if c.Inflight >= c.Prefetch {
			idle++
			continue
		}
		idle = 0
		k, _ := ready.Seek(p)
		if k == nil || !hasPrefix(k, p) {
			return fmt.Errorf("queue %q counts %d ready messages but has none", name, q.Ready)
		}
		seq := binary.BigEndian.Uint64(k[len(p)+1:])
		if err := ready.Delete(); err != nil {
			return err
		}
		q.Ready--
		if err := t.lease(name, q, seq, ids[i], c); err != nil {
			return err
		}
		t.saveConsumer(ids[i], c)
		q.RR = ids[i]
	}
	return t.saveQueue(name, q)
}

// lease hands message seq (already out of the ready set) to consumer c.
func (t *Tx) lease(name string, q *queueRec, seq, cid uint64, c *consumerRec) error {
	m, err := t.leaseTo(name, q, seq, cid, c.Conn, c.LeaseMs)
	if err != nil {
		return err
	}
	c.Inflight++
	if t.isLocal(c.Conn) {
		k := qkey(name, seq)
		body := t.b(bucketBodies).Get(k)
		t.Effects = append(t.Effects, &Delivery{
			Conn: c.Conn, Consumer: cid, Queue: name, Seq: seq, Attempt: m.Attempts,
			LeaseUntil: m.LeaseUntil, Msg: append([]byte(nil), body...), Dead: m.Dead,
		})
	}
	return nil
}

// leaseTo makes message seq (already out of the ready set) inflight,
// held by conn (for consumer cid, 0 for none) until now + leaseMs.
func (t *Tx) leaseTo(name string, q *queueRec, seq, cid uint64, conn string, leaseMs int64) (*msgRec, error) {
	k := qkey(name, seq)
	m := &msgRec{}
	if ok, err := get(t.b(bucketMsgs), k, m); err != nil || !ok {
		return nil, fmt.Errorf("ready message %s/%d has no record (%v)", name, seq, err)
	}
	m.State = StateInflight
	m.Attempts++
	m.Consumer = cid
	m.Conn = conn
	m.LeasedAt = t.now
	m.LeaseUntil = t.now + leaseMs
	m.record(TimelineEvent{At: t.now, Kind: EvDelivered, Attempt: m.Attempts, Who: conn, Consumer: cid})
	q.Inflight++
	if err := put(t.b(bucketMsgs), k, m); err != nil {
		return nil, err
	}
	if err := t.b(bucketTimers).Put(timerKey(m.LeaseUntil, name, seq), nil); err != nil {
		return nil, err
	}
	return m, t.b(bucketByConn).Put(connKey(conn, name, seq), nil)
}

// SettleArgs names one delivery: ack, nack, reject and extend use it.
type SettleArgs struct {
	Queue   string `msgpack:"q"`
	Seq     uint64 `msgpack:"s"`
	Attempt int    `msgpack:"a"`
	Conn    string `msgpack:"c"`
	DelayMs *int64 `msgpack:"d,omitempty"` // nack
	Reason  string `msgpack:"r,omitempty"` // reject, nack (the timeline keeps its first MaxDetailLen bytes)
	LeaseMs int64  `msgpack:"l,omitempty"` // extend
}

// leased loads a delivery that is currently leased to conn with that attempt.
func (t *Tx) leased(a SettleArgs) (*queueRec, *msgRec, error) {
	m := &msgRec{}
	ok, err := get(t.b(bucketMsgs), qkey(a.Queue, a.Seq), m)
	if err != nil {
		return nil, nil, err
	}
	if !ok || m.State != StateInflight || m.Attempts != a.Attempt || m.Conn != a.Conn {
		return nil, nil, ErrNotFound
	}
	q, err := t.loadQueue(a.Queue)
	if err != nil {
		return nil, nil, err
	}
	if q == nil {
		return nil, nil, fmt.Errorf("leased message %s/%d has no queue", a.Queue, a.Seq)
	}
	return q, m, nil
}

// unlease removes a message's lease bookkeeping (timer, connection index,
// consumer capacity); the caller decides where the message goes next.
func (t *Tx) unlease(name string, q *queueRec, seq uint64, m *msgRec) error {
	if err := t.b(bucketTimers).Delete(timerKey(m.LeaseUntil, name, seq)); err != nil {
		return err
	}
	if err := t.b(bucketByConn).Delete(connKey(m.Conn, name, seq)); err != nil {
		return err
	}
	c, err := t.consumer(m.Consumer)
	if err != nil {
		return err
	}
	if c != nil {
		c.Inflight--
		t.saveConsumer(m.Consumer, c)
		t.markDirty(c.Queue)
	}
	q.Inflight--
	m.Consumer, m.Conn, m.LeaseUntil, m.LeasedAt = 0, "", 0, 0
	return nil
}

// Ack removes a delivered message for good.
func (t *Tx) Ack(a SettleArgs) error {
	q, m, err := t.leased(a)
	if err != nil {
		return err
	}
	if err := t.unlease(a.Queue, q, a.Seq, m); err != nil {
		return err
	}
	k := qkey(a.Queue, a.Seq)
	if err := t.b(bucketMsgs).Delete(k); err != nil {
		return err
	}
	if err := t.b(bucketBodies).Delete(k); err != nil {
		return err
	}
	return t.saveQueue(a.Queue, q)
}

// Nack ends an attempt as failed; the message is retried after DelayMs when
// given, else after the queue's backoff, or dead-lettered after its last
// allowed attempt. The reason, when the holder gave one, is in the
// attempt's timeline event and in the dead-lettering it causes.
func (t *Tx) Nack(a SettleArgs) error {
	q, m, err := t.leased(a)
	if err != nil {
		return err
	}
	m.record(TimelineEvent{At: t.now, Kind: EvNacked, Attempt: m.Attempts, Who: a.Conn, Detail: a.Reason})
	if err := t.fail(a.Queue, q, a.Seq, m, a.DelayMs, a.Reason); err != nil {
		return err
	}
	return t.saveQueue(a.Queue, q)
}

// Reject moves a delivered message to its dead-letter queue.
func (t *Tx) Reject(a SettleArgs) error {
	q, m, err := t.leased(a)
	if err != nil {
		return err
	}
	m.record(TimelineEvent{At: t.now, Kind: EvRejected, Attempt: m.Attempts, Who: a.Conn, Detail: a.Reason})
	if err := t.unlease(a.Queue, q, a.Seq, m); err != nil {
		return err
	}
	reason := "rejected"
	if a.Reason != "" {
		reason = "rejected: " + a.Reason
	}
	if err := t.deadLetter(a.Queue, q, a.Seq, m, reason); err != nil {
		return err
	}
	return t.saveQueue(a.Queue, q)
}

// Extend moves a lease's end to now + LeaseMs, never earlier than before.
func (t *Tx) Extend(a SettleArgs) (int64, error) {
	_, m, err := t.leased(a)
	if err != nil {
		return 0, err
	}
	until := t.now + a.LeaseMs
	if until <= m.LeaseUntil {
		return m.LeaseUntil, nil
	}
	timers := t.b(bucketTimers)
	if err := timers.Delete(timerKey(m.LeaseUntil, a.Queue, a.Seq)); err != nil {
		return 0, err
	}
	m.LeaseUntil = until
	if err := timers.Put(timerKey(until, a.Queue, a.Seq), nil); err != nil {
		return 0, err
	}
	return until, put(t.b(bucketMsgs), qkey(a.Queue, a.Seq), m)
}

// fail records a failed attempt of a leased message. delay overrides the
// backoff schedule (a nack's delay_ms; zero for a closed connection); why
// is the holder's reason for a nack, which a dead-lettering names.
func (t *Tx) fail(name string, q *queueRec, seq uint64, m *msgRec, delay *int64, why string) error {
	if err := t.unlease(name, q, seq, m); err != nil {
		return err
	}
	m.Failures++
	if m.Attempts >= q.Settings.MaxAttempts {
		reason := "max_attempts"
		if why != "" {
			// Apply does not refuse a long nack reason (fsm's
			// checkSettle says why): the dead letter keeps at most the
			// MaxReasonLen bytes a reject's reason may have.
			reason += ": " + clip(why, MaxReasonLen)
		}
		return t.deadLetter(name, q, seq, m, reason)
	}
	var d int64
	switch {
	case delay != nil:
		d = *delay
	case len(q.Settings.BackoffMs) > 0:
		i := min(m.Failures, len(q.Settings.BackoffMs)) - 1
		d = q.Settings.BackoffMs[i]
	}
	return t.makeWaiting(name, q, seq, m, d)
}

// deadLetter moves an unleased message to the queue's dead-letter queue with
// the unchanged envelope and its timeline, which ends with the move. A
// message already dead (a DLQ's own failures) keeps its original origin.
func (t *Tx) deadLetter(name string, q *queueRec, seq uint64, m *msgRec, reason string) error {
	k := qkey(name, seq)
	env := append([]byte(nil), t.b(bucketBodies).Get(k)...)
	if err := t.b(bucketMsgs).Delete(k); err != nil {
		return err
	}
	if err := t.b(bucketBodies).Delete(k); err != nil {
		return err
	}
	q.Dead++
	dead := &DeadInfo{Queue: name, Seq: seq, Reason: reason, Attempts: m.Attempts}
	if m.Dead != nil {
		dead.Queue, dead.Seq = m.Dead.Queue, m.Dead.Seq
	}
	dlqName := q.Settings.DLQ
	dlq, err := t.ensureQueue(dlqName)
	if err != nil {
		return err
	}
	dm := &msgRec{Pri: m.Pri, Dead: dead, History: m.History, Dropped: m.Dropped}
	dm.record(TimelineEvent{At: t.now, Kind: EvDead, Attempt: m.Attempts, Detail: reason})
	if _, err := t.store(dlqName, dlq, env, dm, 0); err != nil {
		return err
	}
	return t.saveQueue(dlqName, dlq)
}

// CancelArgs stops a consumer of a connection.
type CancelArgs struct {
	Consumer uint64 `msgpack:"id"`
	Conn     string `msgpack:"c"`
}

// Cancel stops new deliveries to a consumer. Deliveries already made stay
// leased to the connection and may still be settled.
func (t *Tx) Cancel(a CancelArgs) error {
	c, err := t.consumer(a.Consumer)
	if err != nil {
		return err
	}
	if c == nil || c.Conn != a.Conn {
		return ErrNotFound
	}
	return t.deleteConsumer(a.Consumer, c)
}

// ConnClosed ends everything a connection held: its consumers and
// subscriptions go away and its leases are released at once, each a failed
// attempt.
func (t *Tx) ConnClosed(conn string) error { return t.connClosed(conn, "connection closed") }

// connClosed is ConnClosed; why is for the timelines of the messages
// whose leases end.
func (t *Tx) connClosed(conn, why string) error {
	// Consumers and subscriptions of the connection.
	for _, bucket := range [][]byte{bucketConsumers, bucketSubs} {
		keys, owners, err := t.owners(bucket)
		if err != nil {
			return err
		}
		for i, k := range keys {
			if owners[i] != conn {
				continue
			}
			if bytes.Equal(bucket, bucketConsumers) {
				if err := t.Cancel(CancelArgs{Consumer: binary.BigEndian.Uint64(k), Conn: conn}); err != nil {
					return err
				}
			} else if err := t.b(bucketSubs).Delete(k); err != nil {
				return err
			}
		}
	}
	// Leases held by the connection.
	var leases [][]byte
	c := t.b(bucketByConn).Cursor()
	p := prefix(conn)
	for k, _ := c.Seek(p); k != nil && hasPrefix(k, p); k, _ = c.Next() {
		leases = append(leases, append([]byte(nil), k[len(p):]...))
	}
	zero := int64(0)
	for _, k := range leases {
		name, seq := splitQKey(k)
		if err := t.expireLease(name, seq, &zero, EvReleased, why); err != nil {
			return err
		}
	}
	return nil
}

// owners lists the keys of the consumers or subscriptions bucket with the
// connection that owns each (both records keep it under msgpack key "c").
func (t *Tx) owners(bucket []byte) (keys [][]byte, conns []string, err error) {
	err = t.b(bucket).ForEach(func(k, v []byte) error {
		var owner struct {
			Conn string `msgpack:"c"`
		}
		if err := msgpack.Unmarshal(v, &owner); err != nil {
			return fmt.Errorf("decode %s/%x: %w", bucket, k, err)
		}
		keys = append(keys, append([]byte(nil), k...))
		conns = append(conns, owner.Conn)
		return nil
	})
	return keys, conns, err
}

// NodeStarted ends the connections a node held before it restarted: every
// consumer, subscription and lease whose connection belongs to node but not
// to its current epoch.
func (t *Tx) NodeStarted(node string, epoch uint64) error {
	current := fmt.Sprintf("%s/%d/", node, epoch)
	return t.endNodeConns(node, false, "node restarted", func(conn string) bool { return !strings.HasPrefix(conn, current) })
}

// NodeDown ends every connection of a node the leader lost contact with,
// so their leases go back to the queues without waiting to expire. If the
// node was only cut off, its open connections are told to close when it
// applies this, and their clients reconnect.
func (t *Tx) NodeDown(node string) error {
	return t.endNodeConns(node, true, "node down", func(string) bool { return true })
}

// endNodeConns closes the connections of node that match; why is for
// the timelines of the messages whose leases end.
func (t *Tx) endNodeConns(node string, kick bool, why string, match func(conn string) bool) error {
	seen := map[string]bool{}
	var conns []string
	collect := func(conn string) {
		if ConnNode(conn) == node && match(conn) && !seen[conn] {
			seen[conn] = true
			conns = append(conns, conn)
		}
	}
	for _, bucket := range [][]byte{bucketConsumers, bucketSubs} {
		_, owners, err := t.owners(bucket)
		if err != nil {
			return err
		}
		for _, conn := range owners {
			collect(conn)
		}
	}
	c := t.b(bucketByConn).Cursor()
	p := []byte(node + "/")
	for k, _ := c.Seek(p); k != nil && hasPrefix(k, p); k, _ = c.Next() {
		collect(string(k[:bytes.IndexByte(k, 0)]))
	}
	// Connections are ended in id order whatever the bucket order was.
	sort.Strings(conns)
	for _, conn := range conns {
		if kick && t.isLocal(conn) {
			t.Effects = append(t.Effects, &Kick{Conn: conn})
		}
		if err := t.connClosed(conn, why); err != nil {
			return err
		}
	}
	return nil
}

// expireLease ends the lease of a message as a failed attempt, recorded
// in its timeline as an event of kind ev with detail.
func (t *Tx) expireLease(name string, seq uint64, delay *int64, ev EventKind, detail string) error {
	q, err := t.loadQueue(name)
	if err != nil {
		return err
	}
	m := &msgRec{}
	if ok, err := get(t.b(bucketMsgs), qkey(name, seq), m); err != nil || !ok || q == nil {
		return fmt.Errorf("lease of %s/%d has no message (%v)", name, seq, err)
	}
	m.record(TimelineEvent{At: t.now, Kind: ev, Attempt: m.Attempts, Who: m.Conn, Detail: detail})
	if err := t.fail(name, q, seq, m, delay, ""); err != nil {
		return err
	}
	return t.saveQueue(name, q)
}

// Expire processes every timer due at the transaction's time: delayed
// messages become ready and lapsed leases count as failed attempts. It
// also forgets dedup entries older than the window.
func (t *Tx) Expire() error {
	type due struct {
		name string
		seq  uint64
		key  []byte
	}
	var todo []due
	c := t.b(bucketTimers).Cursor()
	for k, _ := c.First(); k != nil && int64(binary.BigEndian.Uint64(k)) <= t.now; k, _ = c.Next() {
		todo = append(todo, due{name: string(k[16:]), seq: binary.BigEndian.Uint64(k[8:16]), key: append([]byte(nil), k...)})
	}
	for _, d := range todo {
		m := &msgRec{}
		if ok, err := get(t.b(bucketMsgs), qkey(d.name, d.seq), m); err != nil || !ok {
			return fmt.Errorf("timer for %s/%d has no message (%v)", d.name, d.seq, err)
		}
		switch m.State {
		case StateDelayed:
			q, err := t.loadQueue(d.name)
			if err != nil {
				return err
			}
			if err := t.b(bucketTimers).Delete(d.key); err != nil {
				return err
			}
			q.Delayed--
			if err := t.makeWaiting(d.name, q, d.seq, m, 0); err != nil {
				return err
			}
			if err := t.saveQueue(d.name, q); err != nil {
				return err
			}
		case StateInflight:
			if err := t.expireLease(d.name, d.seq, nil, EvExpired, ""); err != nil {
				return err
			}
		default:
			return fmt.Errorf("timer for %s/%d in state %d", d.name, d.seq, m.State)
		}
	}
	return t.dedupExpire()
}
