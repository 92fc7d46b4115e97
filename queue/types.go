// Package queue owns mcpd's messaging semantics as plain functions over a
// bbolt transaction: durable queues (enqueue, lease, ack, nack, reject,
// extend, expiry, backoff, dead-lettering, delays, priorities, max_len),
// envelope deduplication, consumers, and topic subscriptions.
//
// Nothing here reads a clock, draws a random number or iterates a Go map:
// every function is evaluated against the time stamped into the command by
// the Raft leader (Tx.Now), so every replica computes the same state. The
// package imports neither raft nor net; the fsm package calls it from Apply.
package queue

import (
	"errors"
)

// Sentinel errors returned by the operations. The transport maps them to
// protocol error codes; they travel back to the origin connection inside a
// Reply effect.
var (
	ErrNotFound   = errors.New("not found")
	ErrFull       = errors.New("queue is full")
	ErrConflict   = errors.New("envelope id already used with different content or destination")
	ErrBadRequest = errors.New("bad request")
	ErrForbidden  = errors.New("forbidden")
)

// Defaults for a queue created implicitly or by queue.declare.
const (
	DefaultMaxAttempts = 5
	// DedupWindowMs is how long an envelope (from, id) is remembered after
	// its first store. It is a constant of the replicated state machine, not
	// a per-node flag: replicas must agree on it.
	DedupWindowMs = 2 * 60 * 1000
)

// Limits of command arguments, the ones the transport applies to client
// requests. Like DedupWindowMs they are constants of the replicated state
// machine: the FSM refuses a command outside them with ErrBadRequest, so a
// command a faulty peer proposes gets an error reply instead of reaching
// state.db.
const (
	MaxDelayMs     = 30 * 24 * 3600 * 1000 // enqueue and nack delays, each backoff step
	MinLeaseMs     = 100
	MaxLeaseMs     = 3_600_000
	MaxPrefetch    = 1000
	MaxMaxAttempts = 1000
	MaxBackoffLen  = 32
	MaxReasonLen   = 1024
	MaxPriority    = 9
	MaxSeq         = 1 << 53 // also the largest max_len
	MaxAttempt     = 1 << 31
	MaxIDLen       = 128  // an envelope id
	MaxConnLen     = 1024 // a connection id "node/epoch/n", and a node id
)

// DefaultBackoffMs is the retry schedule of a queue that declares none.
var DefaultBackoffMs = []int64{1000, 5000, 30000}

// Message states.
const (
	StateReady    uint8 = 1
	StateDelayed  uint8 = 2
	StateInflight uint8 = 3
)

// Settings are a queue's configuration as reported by queue.declare.
type Settings struct {
	MaxAttempts int     `msgpack:"ma"`
	BackoffMs   []int64 `msgpack:"bo"`
	DLQ         string  `msgpack:"dlq"`
	MaxLen      int64   `msgpack:"ml"` // 0 = unbounded
}

// queueRec is the stored record of one queue.
type queueRec struct {
	Settings Settings `msgpack:"s"`
	NextSeq  uint64   `msgpack:"n"`
	Ready    int64    `msgpack:"r"`
	Delayed  int64    `msgpack:"d"`
	Inflight int64    `msgpack:"i"`
	Dead     int64    `msgpack:"x"` // moved to the DLQ since creation
	RR       uint64   `msgpack:"rr"`
	Created  int64    `msgpack:"c"`
}

// DeadInfo describes where a dead-lettered message came from.
type DeadInfo struct {
	Queue    string `msgpack:"q" json:"queue"`
	Seq      uint64 `msgpack:"s" json:"seq"`
	Reason   string `msgpack:"r" json:"reason"`
	Attempts int    `msgpack:"a" json:"attempts"`
}

// msgRec is the metadata of one stored message; the envelope bytes live in
// the bodies bucket so that lease changes do not rewrite them.
type msgRec struct {
	Pri        uint8     `msgpack:"p"`
	State      uint8     `msgpack:"st"`
	Attempts   int       `msgpack:"a"` // deliveries made
	Failures   int       `msgpack:"f"`
	Due        int64     `msgpack:"d,omitempty"` // delayed: when it becomes ready
	LeaseUntil int64     `msgpack:"l,omitempty"`
	LeasedAt   int64     `msgpack:"la,omitempty"` // when the current lease began
	Consumer   uint64    `msgpack:"c,omitempty"`
	Conn       string    `msgpack:"cn,omitempty"`
	Enqueued   int64     `msgpack:"e"`
	Dead       *DeadInfo `msgpack:"x,omitempty"`
	History    []byte    `msgpack:"h,omitempty"`  // what happened to it, encoded (timeline.go)
	Dropped    int       `msgpack:"hd,omitempty"` // events dropped from History to bound it
}

// consumerRec is one consumer: a connection's standing request for
// deliveries from a queue.
type consumerRec struct {
	Queue    string `msgpack:"q"`
	Node     string `msgpack:"n"`
	Conn     string `msgpack:"c"`
	Prefetch int    `msgpack:"p"`
	LeaseMs  int64  `msgpack:"l"`
	Inflight int    `msgpack:"i"`
}

// subRec is one topic subscription.
type subRec struct {
	Pattern string `msgpack:"p"`
	Node    string `msgpack:"n"`
	Conn    string `msgpack:"c"`
}

// dedupRec remembers the first store of an envelope.
type dedupRec struct {
	Dest string   `msgpack:"d"`
	Seq  uint64   `msgpack:"s"`
	Hash [32]byte `msgpack:"h"`
	At   int64    `msgpack:"a"`
}

// Effect is something a command produced for a client connection. Effects
// are computed during Apply but only for connections of the local node, and
// handed to the connections after the transaction commits.
type Effect interface {
	// Target is the connection the effect is for.
	Target() string
}

// Delivery is a message leased to a consumer.
type Delivery struct {
	Conn       string
	Consumer   uint64
	Queue      string
	Seq        uint64
	Attempt    int
	LeaseUntil int64
	Msg        []byte
	Dead       *DeadInfo
}

// Event is a published message for one subscription.
type Event struct {
	Conn  string
	Sub   uint64
	Topic string
	Msg   []byte
}

// Kick tells a local connection that the cluster ended it (its node was
// declared down while it was cut off): the connection must close so that
// its client reconnects and opens its consumers again.
type Kick struct {
	Conn string
}

// Target implements Effect.
func (k *Kick) Target() string { return k.Conn }

// Target implements Effect.
func (d *Delivery) Target() string { return d.Conn }

// Target implements Effect.
func (e *Event) Target() string { return e.Conn }

// Info is what queue.info reports.
type Info struct {
	Ready     int64 `json:"ready"`
	Inflight  int64 `json:"inflight"`
	Delayed   int64 `json:"delayed"`
	Dead      int64 `json:"dead"`
	Consumers int64 `json:"consumers"`
}
