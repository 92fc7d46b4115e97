package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/mcpd/mcpd/internal/mpack"
)

// A message's timeline: what happened to it, kept in its record so that
// an operator looking at a dead letter sees when it was enqueued, each
// delivery (attempt, holder), each nack, reject and lapsed lease, its
// dead-lettering and its redrives. A dead letter carries the timeline of
// the message it was, and a redriven message that of the dead letter.
//
// Every event is stamped with the command's time (Tx.Now) and made from
// the command and the state alone, so replicas keep the same timelines.
// The record is rewritten at every delivery and settle, so the timeline
// is bounded: the first event and the latest MaxTimeline-1, with a count
// of those dropped between them, each event's text clipped. It stays
// encoded in the record: an event is appended to the bytes without
// decoding the others, and only a reader decodes it.

// EventKind is what happened to a message.
type EventKind uint8

// Kinds of timeline events. Stored as numbers: append only.
const (
	EvEnqueued  EventKind = 1 // stored by an enqueue (Who: the sender)
	EvDelivered EventKind = 2 // leased (Who: the connection or Redis consumer; Consumer: the consumer, 0 for a pull)
	EvNacked    EventKind = 3 // its holder nacked the attempt (Detail: the reason given, if any)
	EvRejected  EventKind = 4 // its holder rejected it (Detail: the reason given)
	EvExpired   EventKind = 5 // the attempt's lease lapsed
	EvReleased  EventKind = 6 // the lease ended with its holder's connection (Detail: why)
	EvDead      EventKind = 7 // moved to the dead-letter queue (Detail: the reason)
	EvRedriven  EventKind = 8 // an operator moved the dead letter back (Who: the operator; Detail: from DLQ/SEQ)
)

var eventNames = [...]string{"", "enqueued", "delivered", "nacked", "rejected", "expired", "released", "dead", "redriven"}

// String is the event's name as the admin API shows it.
func (k EventKind) String() string {
	if int(k) < len(eventNames) && k != 0 {
		return eventNames[k]
	}
	return fmt.Sprintf("event%d", uint8(k))
}

// Bounds of a timeline: constants of the replicated state machine.
const (
	MaxTimeline  = 16  // events kept: the first and the latest 15
	MaxWhoLen    = 128 // bytes of an event's Who
	MaxDetailLen = 200 // bytes of an event's Detail
)

// TimelineEvent is one thing that happened to a message.
type TimelineEvent struct {
	At       int64 // the command's time, unix ms
	Kind     EventKind
	Attempt  int    // the delivery it concerns; 0 before the first
	Who      string // who acted: see the kinds
	Consumer uint64 // the consumer a delivery went to
	Detail   string // see the kinds
}

// record adds an event to the message's timeline, dropping the oldest
// events but the first when it is full. A stored timeline it cannot read
// (mcpd never writes one) starts again with e, its events counted as one
// dropped: a display aid is not worth failing the command, which would
// stop every replica. Every replica holds the same bytes, so every one
// starts again alike.
func (m *msgRec) record(e TimelineEvent) {
	e.Who = clip(e.Who, MaxWhoLen)
	e.Detail = clip(e.Detail, MaxDetailLen)
	h, dropped, err := appendEvent(m.History, e)
	if err != nil {
		h, dropped, _ = appendEvent(nil, e)
		dropped = 1
	}
	m.History = h
	m.Dropped += dropped
}

// clip cuts s to at most n bytes, at the start of a UTF-8 sequence.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// The stored form (msgRec.History, a byte string in the record) is a
// msgpack array of events, each an array [dt, kind, attempt, who,
// consumer, detail] without its trailing zero fields. dt is the time
// since the first event, which is never dropped (the first's is its
// time); who is nil when it is the previous event's (a message retried
// by one connection names it once). Readers skip fields they do not
// know, so fields can be added at the end.

var errTimeline = errors.New("malformed timeline")

// evPos locates one stored event.
type evPos struct {
	start, end int
	dt         int64
	who        []byte // the event's who, resolved through nil
	nilAt      int    // where its who is nil, or -1
}

// scanEvent reads the event at b[i:], whose previous event's who is prev.
func scanEvent(b []byte, i int, prev []byte) (evPos, error) {
	p := evPos{start: i, nilAt: -1}
	n, i, err := readArrayLen(b, i)
	if err != nil || n < 2 {
		return p, errTimeline
	}
	if p.dt, i, err = readInt(b, i); err != nil {
		return p, err
	}
	for f := 1; f < n; f++ {
		switch f {
		case 1, 2, 4: // kind, attempt, consumer
			_, i, err = readInt(b, i)
		case 3:
			if i < len(b) && b[i] == 0xc0 {
				p.who, p.nilAt = prev, i
				i++
			} else {
				p.who, i, err = readStr(b, i)
			}
		case 5:
			_, i, err = readStr(b, i)
		default:
			i, err = skipValue(b, i)
		}
		if err != nil {
			return p, err
		}
	}
	p.end = i
	return p, nil
}

// appendEvent returns the stored timeline h with e added, in a new
// slice, and how many events it dropped to stay within MaxTimeline.
func appendEvent(h []byte, e TimelineEvent) ([]byte, int, error) {
	if len(h) == 0 {
		out := appendArrayLen(make([]byte, 0, 40+len(e.Who)+len(e.Detail)), 1)
		return encodeEvent(out, e, e.At, nil), 0, nil
	}
	n, i, err := readArrayLen(h, 0)
	if err != nil || n < 1 {
		return nil, 0, errTimeline
	}
	// Events 1 to drop go; k is the first kept after them.
	drop := max(0, n-(MaxTimeline-1))
	var first, k, last evPos
	for j := range n {
		if last, err = scanEvent(h, i, last.who); err != nil {
			return nil, 0, err
		}
		switch j {
		case 0:
			first = last
		case 1 + drop:
			k = last
		}
		i = last.end
	}
	if i != len(h) {
		return nil, 0, errTimeline
	}
	size := len(h) + 40 + len(e.Who) + len(e.Detail) // 40: headers and numbers
	if drop > 0 && k.nilAt >= 0 {
		size += 3 + len(k.who)
	}
	out := make([]byte, 0, size)
	out = appendArrayLen(out, n-drop+1)
	out = append(out, h[first.start:first.end]...)
	if drop == 0 {
		out = append(out, h[first.end:last.end]...)
	} else {
		// The first event kept after the gap names its who again if it
		// said "the previous one's", which is gone.
		if k.nilAt >= 0 {
			out = append(out, h[k.start:k.nilAt]...)
			out = appendStr(out, k.who)
			out = append(out, h[k.nilAt+1:k.end]...)
		} else {
			out = append(out, h[k.start:k.end]...)
		}
		out = append(out, h[k.end:last.end]...)
	}
	return encodeEvent(out, e, e.At-first.dt, last.who), drop, nil
}

// encodeEvent appends e with time dt, prev the who of the event before.
func encodeEvent(b []byte, e TimelineEvent, dt int64, prev []byte) []byte {
	n := 6
	switch {
	case e.Detail != "":
	case e.Consumer != 0:
		n = 5
	case e.Who != "":
		n = 4
	case e.Attempt != 0:
		n = 3
	default:
		n = 2
	}
	b = appendArrayLen(b, n)
	b = appendInt(b, dt)
	b = appendInt(b, int64(e.Kind))
	if n > 2 {
		b = appendInt(b, int64(e.Attempt))
	}
	if n > 3 {
		if e.Who != "" && string(prev) == e.Who {
			b = append(b, 0xc0)
		} else {
			b = appendStr(b, []byte(e.Who))
		}
	}
	if n > 4 {
		b = appendUint(b, e.Consumer)
	}
	if n > 5 {
		b = appendStr(b, []byte(e.Detail))
	}
	return b
}

// decodeTimeline reads a stored timeline.
func decodeTimeline(h []byte) ([]TimelineEvent, error) {
	if len(h) == 0 {
		return nil, nil
	}
	n, i, err := readArrayLen(h, 0)
	if err != nil || n < 1 || n > len(h) {
		return nil, errTimeline
	}
	out := make([]TimelineEvent, n)
	var who string
	for k := range out {
		e := &out[k]
		m, j, err := readArrayLen(h, i)
		if err != nil || m < 2 {
			return nil, errTimeline
		}
		i = j
		var v int64
		for f := range m {
			switch f {
			case 0:
				v, i, err = readInt(h, i)
				e.At = v
				if k > 0 {
					e.At += out[0].At
				}
			case 1:
				v, i, err = readInt(h, i)
				e.Kind = EventKind(v)
			case 2:
				v, i, err = readInt(h, i)
				e.Attempt = int(v)
			case 3:
				if i < len(h) && h[i] == 0xc0 {
					e.Who = who
					i++
				} else {
					var s []byte
					s, i, err = readStr(h, i)
					e.Who = string(s)
				}
			case 4:
				v, i, err = readInt(h, i)
				e.Consumer = uint64(v)
			case 5:
				var s []byte
				s, i, err = readStr(h, i)
				e.Detail = string(s)
			default:
				i, err = skipValue(h, i)
			}
			if err != nil {
				return nil, err
			}
		}
		who = e.Who
	}
	if i != len(h) {
		return nil, errTimeline
	}
	return out, nil
}

// Minimal msgpack, for the types a timeline holds: arrays, integers,
// strings and nil; anything else is skipped by the msgpack package.

func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n < 1<<16:
		return binary.BigEndian.AppendUint16(append(b, 0xdc), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdd), uint32(n))
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v < 128:
		return append(b, byte(v))
	case v < 1<<8:
		return append(b, 0xcc, byte(v))
	case v < 1<<16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v < 1<<32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
}

func appendInt(b []byte, v int64) []byte {
	switch {
	case v >= 0:
		return appendUint(b, uint64(v))
	case v >= -32:
		return append(b, byte(v))
	case v >= -1<<7:
		return append(b, 0xd0, byte(v))
	case v >= -1<<15:
		return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(v))
	case v >= -1<<31:
		return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(v))
}

func appendStr(b, s []byte) []byte {
	switch n := len(s); {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n < 1<<8:
		b = append(b, 0xd9, byte(n))
	case n < 1<<16:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}

// readN returns the n bytes at b[i:] and the index after them.
func readN(b []byte, i, n int) ([]byte, int, error) {
	if n < 0 || i+n > len(b) || i+n < i {
		return nil, 0, errTimeline
	}
	return b[i : i+n], i + n, nil
}

func readArrayLen(b []byte, i int) (int, int, error) {
	if i >= len(b) {
		return 0, 0, errTimeline
	}
	switch c := b[i]; {
	case c >= 0x90 && c <= 0x9f:
		return int(c & 0x0f), i + 1, nil
	case c == 0xdc:
		v, j, err := readN(b, i+1, 2)
		if err != nil {
			return 0, 0, err
		}
		return int(binary.BigEndian.Uint16(v)), j, nil
	case c == 0xdd:
		v, j, err := readN(b, i+1, 4)
		if err != nil {
			return 0, 0, err
		}
		return int(binary.BigEndian.Uint32(v)), j, nil
	}
	return 0, 0, errTimeline
}

func readInt(b []byte, i int) (int64, int, error) {
	if i >= len(b) {
		return 0, 0, errTimeline
	}
	c := b[i]
	switch {
	case c < 0x80:
		return int64(c), i + 1, nil
	case c >= 0xe0:
		return int64(int8(c)), i + 1, nil
	}
	var size int
	switch c {
	case 0xcc, 0xd0:
		size = 1
	case 0xcd, 0xd1:
		size = 2
	case 0xce, 0xd2:
		size = 4
	case 0xcf, 0xd3:
		size = 8
	default:
		return 0, 0, errTimeline
	}
	v, j, err := readN(b, i+1, size)
	if err != nil {
		return 0, 0, err
	}
	switch c {
	case 0xcc:
		return int64(v[0]), j, nil
	case 0xcd:
		return int64(binary.BigEndian.Uint16(v)), j, nil
	case 0xce:
		return int64(binary.BigEndian.Uint32(v)), j, nil
	case 0xcf:
		return int64(binary.BigEndian.Uint64(v)), j, nil
	case 0xd0:
		return int64(int8(v[0])), j, nil
	case 0xd1:
		return int64(int16(binary.BigEndian.Uint16(v))), j, nil
	case 0xd2:
		return int64(int32(binary.BigEndian.Uint32(v))), j, nil
	}
	return int64(binary.BigEndian.Uint64(v)), j, nil
}

func readStr(b []byte, i int) ([]byte, int, error) {
	if i >= len(b) {
		return nil, 0, errTimeline
	}
	c := b[i]
	var n, j int
	switch {
	case c >= 0xa0 && c <= 0xbf:
		n, j = int(c&0x1f), i+1
	case c == 0xd9 || c == 0xda || c == 0xdb:
		size := 1 << (c - 0xd9)
		v, k, err := readN(b, i+1, size)
		if err != nil {
			return nil, 0, err
		}
		switch size {
		case 1:
			n = int(v[0])
		case 2:
			n = int(binary.BigEndian.Uint16(v))
		default:
			n = int(binary.BigEndian.Uint32(v))
		}
		j = k
	default:
		return nil, 0, errTimeline
	}
	return readN(b, j, n)
}

// skipValue returns the index after the value at b[i:] (a field a later
// version added), without recursion or allocation per element.
func skipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, errTimeline
	}
	n, err := mpack.Len(b[i:])
	if err != nil {
		return 0, errTimeline
	}
	return i + n, nil
}
