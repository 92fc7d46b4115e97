package queue

import (
	"encoding/binary"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Operator actions on stored messages: redriving dead letters back to a
// queue, and deleting a message. Both validate everything before they
// write anything (bbolt has no savepoints: a refused command must leave
// the state as it found it).

// MaxRedrive bounds the messages one redrive moves, so that one log entry
// and one apply stay bounded; an operator's request for more is several
// commands.
const MaxRedrive = 1000

// RedriveArgs moves dead letters of the queue DLQ back to a queue: each
// to the queue it died in (its DeadInfo), or all to To.
//
// With Seqs, exactly those messages move, or none: each must be a dead
// letter (it has a DeadInfo) stored in DLQ and not leased. Without Seqs,
// the dead letters of DLQ after seq After move in seq order, at most
// Limit of them (0 means MaxRedrive), and none after seq Through when it
// is set (the last seq of DLQ when the operator asked: messages that die
// again after their redrive do not come round again); leased ones and
// messages that are not dead letters are passed over.
type RedriveArgs struct {
	DLQ     string   `msgpack:"q"`
	Seqs    []uint64 `msgpack:"s,omitempty"`
	To      string   `msgpack:"to,omitempty"`
	Limit   int      `msgpack:"l,omitempty"`
	After   uint64   `msgpack:"a,omitempty"`
	Through uint64   `msgpack:"th,omitempty"`
}

// Moved is one redriven message: its seq in the dead-letter queue, and
// the queue and seq it has now.
type Moved struct {
	From  uint64 `msgpack:"f" json:"from"`
	Queue string `msgpack:"q" json:"queue"`
	Seq   uint64 `msgpack:"s" json:"seq"`
}

// RedriveResult is the outcome of a redrive. Without Seqs, More reports
// that it stopped at its limit with messages of the dead-letter queue
// left after Last, the last seq it looked at: the next command continues
// with After = Last.
type RedriveResult struct {
	Moved []Moved `msgpack:"m"`
	More  bool    `msgpack:"x,omitempty"`
	Last  uint64  `msgpack:"l,omitempty"`
}

// DeleteArgs deletes one message of a queue. A leased message is refused
// with ErrConflict unless Force is set: then its lease ends with it, and
// its holder's later ack, nack, reject or extend is answered ErrNotFound.
type DeleteArgs struct {
	Queue string `msgpack:"q"`
	Seq   uint64 `msgpack:"s"`
	Force bool   `msgpack:"f,omitempty"`
}

// DeleteResult describes the deleted message as it was.
type DeleteResult struct {
	State    uint8     `msgpack:"st"`
	Attempts int       `msgpack:"a"`
	Holder   string    `msgpack:"h,omitempty"` // the lease's holder, for a forced delete of a leased message
	Dead     *DeadInfo `msgpack:"x,omitempty"`
}

// detailedErr is a sentinel with a message of its own: errors.Is finds
// the sentinel, and the reply carries the message (ErrConflict's own
// text is about envelope ids).
type detailedErr struct {
	sentinel error
	msg      string
}

func (e *detailedErr) Error() string { return e.msg }
func (e *detailedErr) Unwrap() error { return e.sentinel }

func errorf(sentinel error, format string, args ...any) error {
	return &detailedErr{sentinel: sentinel, msg: fmt.Sprintf(format, args...)}
}

// redriven is a dead letter chosen to move, with where it goes.
type redriven struct {
	seq  uint64
	m    *msgRec
	dest string
}

// Redrive moves dead letters as RedriveArgs says. Each becomes a new
// ready message at the end of its destination queue, with the unchanged
// envelope and priority, no attempts and no dead-letter info, and the
// dead letter's timeline with the redrive added; it leaves the
// dead-letter queue. The destination must exist and is held to its
// max_len as an enqueue is: when the messages do not all fit, none
// moves (ErrFull). The destination's dead-lettered count, a count of what
// happened, stays as it is.
func (t *Tx) Redrive(a RedriveArgs) (RedriveResult, error) {
	var res RedriveResult
	limit := a.Limit
	switch {
	case len(a.Seqs) > MaxRedrive:
		return res, errorf(ErrBadRequest, "at most %d seqs per redrive", MaxRedrive)
	case limit < 0 || limit > MaxRedrive:
		return res, errorf(ErrBadRequest, "limit must be between 0 and %d", MaxRedrive)
	case a.After > MaxSeq || a.Through > MaxSeq:
		return res, errorf(ErrBadRequest, "after and through must be seqs")
	case limit == 0:
		limit = MaxRedrive
	}
	if a.To != "" && a.To == a.DLQ {
		return res, errorf(ErrBadRequest, "cannot redrive %s into itself", a.DLQ)
	}
	dlq, err := t.loadQueue(a.DLQ)
	if err != nil {
		return res, err
	}
	if dlq == nil {
		return res, errorf(ErrNotFound, "no queue %q", a.DLQ)
	}
	var picked []redriven
	if len(a.Seqs) > 0 {
		picked, err = t.pickSeqs(a.DLQ, a.Seqs)
	} else {
		picked, res.More, res.Last, err = t.pickDead(a.DLQ, a.After, a.Through, limit)
	}
	if err != nil {
		return RedriveResult{}, err
	}
	// Destinations: each must exist and have room for what it gets.
	dests := map[string]*queueRec{}
	count := map[string]int64{}
	var order []string // destinations in the order they first appear
	for i := range picked {
		p := &picked[i]
		p.dest = a.To
		if p.dest == "" {
			p.dest = p.m.Dead.Queue
		}
		if _, ok := dests[p.dest]; !ok {
			if p.dest == a.DLQ {
				return RedriveResult{}, errorf(ErrBadRequest, "%s/%d died in %s itself: give a target queue", a.DLQ, p.seq, a.DLQ)
			}
			q, err := t.loadQueue(p.dest)
			if err != nil {
				return RedriveResult{}, err
			}
			if q == nil {
				return RedriveResult{}, errorf(ErrNotFound, "no queue %q to redrive %s/%d to", p.dest, a.DLQ, p.seq)
			}
			dests[p.dest] = q
			order = append(order, p.dest)
		}
		count[p.dest]++
	}
	for _, name := range order {
		q := dests[name]
		if q.Settings.MaxLen > 0 && q.Ready+q.Delayed+q.Inflight+count[name] > q.Settings.MaxLen {
			room := max(0, q.Settings.MaxLen-q.Ready-q.Delayed-q.Inflight)
			return RedriveResult{}, errorf(ErrFull, "queue %q has room for %d of the %d messages (max_len %d)", name, room, count[name], q.Settings.MaxLen)
		}
	}
	// Everything checked: move them.
	res.Moved = make([]Moved, 0, len(picked))
	for _, p := range picked {
		env, err := t.remove(a.DLQ, dlq, p.seq, p.m)
		if err != nil {
			return RedriveResult{}, err
		}
		q := dests[p.dest]
		m := &msgRec{Pri: p.m.Pri, History: p.m.History, Dropped: p.m.Dropped}
		m.record(TimelineEvent{At: t.now, Kind: EvRedriven, Who: t.actor, Detail: fmt.Sprintf("from %s/%d", a.DLQ, p.seq)})
		seq, err := t.store(p.dest, q, env, m, 0)
		if err != nil {
			return RedriveResult{}, err
		}
		if err := t.saveQueue(p.dest, q); err != nil {
			return RedriveResult{}, err
		}
		res.Moved = append(res.Moved, Moved{From: p.seq, Queue: p.dest, Seq: seq})
	}
	return res, t.saveQueue(a.DLQ, dlq)
}

// pickSeqs loads the named dead letters of a queue, refusing the whole
// list when one of them cannot move.
func (t *Tx) pickSeqs(name string, seqs []uint64) ([]redriven, error) {
	out := make([]redriven, 0, len(seqs))
	seen := make(map[uint64]bool, len(seqs))
	for _, seq := range seqs {
		if seen[seq] {
			return nil, errorf(ErrBadRequest, "seq %d given twice", seq)
		}
		seen[seq] = true
		m := &msgRec{}
		ok, err := get(t.b(bucketMsgs), qkey(name, seq), m)
		switch {
		case err != nil:
			return nil, err
		case !ok:
			return nil, errorf(ErrNotFound, "no message %s/%d", name, seq)
		case m.Dead == nil:
			return nil, errorf(ErrBadRequest, "%s/%d is not a dead letter", name, seq)
		case m.State == StateInflight:
			return nil, errorf(ErrConflict, "%s/%d is leased to %s until %d: redrive it when its lease ends, or delete it", name, seq, m.Conn, m.LeaseUntil)
		}
		out = append(out, redriven{seq: seq, m: m})
	}
	return out, nil
}

// pickDead lists up to limit dead letters of a queue with seqs in
// (after, through] (through 0: no end), in seq order, passing over
// leased messages and those that are not dead letters. more reports that
// messages remain after last, the last seq looked at.
func (t *Tx) pickDead(name string, after, through uint64, limit int) (out []redriven, more bool, last uint64, err error) {
	p := prefix(name)
	c := t.b(bucketMsgs).Cursor()
	for k, v := c.Seek(qkey(name, after+1)); k != nil && hasPrefix(k, p); k, v = c.Next() {
		seq := binary.BigEndian.Uint64(k[len(p):])
		if through > 0 && seq > through {
			break
		}
		if len(out) == limit {
			return out, true, last, nil
		}
		last = seq
		m := &msgRec{}
		if err := msgpack.Unmarshal(v, m); err != nil {
			return nil, false, 0, fmt.Errorf("decode message %s/%d: %w", name, seq, err)
		}
		if m.Dead == nil || m.State == StateInflight {
			continue
		}
		out = append(out, redriven{seq: seq, m: m})
	}
	return out, false, last, nil
}

// Delete removes one message of a queue, whatever its state (see
// DeleteArgs for a leased one), and returns what it was.
func (t *Tx) Delete(a DeleteArgs) (DeleteResult, error) {
	q, err := t.loadQueue(a.Queue)
	if err != nil {
		return DeleteResult{}, err
	}
	if q == nil {
		return DeleteResult{}, errorf(ErrNotFound, "no queue %q", a.Queue)
	}
	m := &msgRec{}
	ok, err := get(t.b(bucketMsgs), qkey(a.Queue, a.Seq), m)
	switch {
	case err != nil:
		return DeleteResult{}, err
	case !ok:
		return DeleteResult{}, errorf(ErrNotFound, "no message %s/%d", a.Queue, a.Seq)
	case m.State == StateInflight && !a.Force:
		return DeleteResult{}, errorf(ErrConflict, "%s/%d is leased to %s until %d: wait for it to be settled or its lease to end, or force the delete", a.Queue, a.Seq, m.Conn, m.LeaseUntil)
	}
	res := DeleteResult{State: m.State, Attempts: m.Attempts, Holder: m.Conn, Dead: m.Dead}
	if _, err := t.remove(a.Queue, q, a.Seq, m); err != nil {
		return DeleteResult{}, err
	}
	return res, t.saveQueue(a.Queue, q)
}

// remove takes a stored message out of its queue in any state: out of the
// ready set or the delayed timers, or out of its lease (its consumer
// gets the capacity back); its record and envelope are deleted and the
// envelope is returned. The caller saves q.
func (t *Tx) remove(name string, q *queueRec, seq uint64, m *msgRec) ([]byte, error) {
	switch m.State {
	case StateReady:
		if err := t.b(bucketReady).Delete(readyKey(name, m.Pri, seq)); err != nil {
			return nil, err
		}
		q.Ready--
	case StateDelayed:
		if err := t.b(bucketTimers).Delete(timerKey(m.Due, name, seq)); err != nil {
			return nil, err
		}
		q.Delayed--
	case StateInflight:
		if err := t.unlease(name, q, seq, m); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("message %s/%d in state %d", name, seq, m.State)
	}
	k := qkey(name, seq)
	env := append([]byte(nil), t.b(bucketBodies).Get(k)...)
	if err := t.b(bucketMsgs).Delete(k); err != nil {
		return nil, err
	}
	if err := t.b(bucketBodies).Delete(k); err != nil {
		return nil, err
	}
	return env, nil
}
