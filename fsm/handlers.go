package fsm

import (
	"fmt"
	"strings"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/internal/mpack"
	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/task"
)

// Reply is the outcome of a client's command, for the node that holds the
// client's connection. Err is a business error (a queue sentinel) or nil;
// Result is one of the *Result types below or nil.
type Reply struct {
	Conn   string
	Req    uint64
	Type   MessageType
	Err    error
	Result any
}

// Target implements queue.Effect.
func (r *Reply) Target() string { return r.Conn }

// Results of commands, carried in Reply.Result.
type (
	// EnqueueResult answers enqueue and send.
	EnqueueResult = queue.EnqueueResult
	// PublishResult answers publish.
	PublishResult = queue.PublishResult
	// ConsumeResult answers consume.
	ConsumeResult struct{ Consumer uint64 }
	// SubscribeResult answers subscribe.
	SubscribeResult struct{ Sub uint64 }
	// ExtendResult answers extend.
	ExtendResult struct{ LeaseUntil int64 }
	// DeclareResult answers queue.declare.
	DeclareResult = queue.Settings
)

// Tx is one command's view of the state: the queue transaction (which
// the queue, Redis, agent and audit commands use through its promoted
// methods) and the task transaction of the same bbolt transaction.
type Tx struct {
	*queue.Tx
	Tasks *task.Tx
}

// handler applies one decoded command. It returns the result for the
// reply, the decoded arguments (for the audit entry) and a business error;
// anything else it cannot handle is a bug and panics in the caller.
type handler func(t *Tx, body []byte) (res, args any, err error)

var handlers = map[MessageType]handler{}

// register adds a typed handler to the dispatch table. check validates the
// decoded arguments before fn sees them: a command that fails it is
// answered with its ErrBadRequest and changes nothing.
func register[A any](mt MessageType, check func(a *A) error, fn func(t *Tx, a *A) (any, error)) {
	handlers[mt] = func(t *Tx, body []byte) (any, any, error) {
		a := new(A)
		if err := mpack.Unmarshal(body, a); err != nil {
			panic(fmt.Sprintf("fsm: cannot decode command type %d: %v", mt, err))
		}
		if err := check(a); err != nil {
			return nil, a, err
		}
		res, err := fn(t, a)
		return res, a, err
	}
}

func init() {
	register(TypeEnqueue, checkEnqueue, func(t *Tx, a *queue.EnqueueArgs) (any, error) {
		r, err := t.Enqueue(*a)
		return &r, err
	})
	register(TypeConsume, checkConsume, func(t *Tx, a *queue.ConsumeArgs) (any, error) {
		id, err := t.Consume(*a)
		return &ConsumeResult{Consumer: id}, err
	})
	register(TypeAck, checkSettle(TypeAck), func(t *Tx, a *queue.SettleArgs) (any, error) {
		return nil, t.Ack(*a)
	})
	register(TypeNack, checkSettle(TypeNack), func(t *Tx, a *queue.SettleArgs) (any, error) {
		return nil, t.Nack(*a)
	})
	register(TypeReject, checkSettle(TypeReject), func(t *Tx, a *queue.SettleArgs) (any, error) {
		return nil, t.Reject(*a)
	})
	register(TypeExtend, checkSettle(TypeExtend), func(t *Tx, a *queue.SettleArgs) (any, error) {
		until, err := t.Extend(*a)
		return &ExtendResult{LeaseUntil: until}, err
	})
	register(TypeCancel, func(a *queue.CancelArgs) error { return checkConn("conn", a.Conn) },
		func(t *Tx, a *queue.CancelArgs) (any, error) {
			return nil, t.Cancel(*a)
		})
	register(TypeDeclare, checkDeclare, func(t *Tx, a *queue.DeclareArgs) (any, error) {
		s, err := t.Declare(*a)
		return &s, err
	})
	register(TypePublish, checkPublish, func(t *Tx, a *queue.PublishArgs) (any, error) {
		r, err := t.Publish(*a)
		if err == nil && !r.Dup {
			// Redis subscribers of the same channel get the envelope.
			t.Effects = append(t.Effects, &Published{Channel: []byte(a.Topic), Message: a.Env, Receivers: int64(r.Receivers)})
		}
		return &r, err
	})
	register(TypeSubscribe, checkSubscribe, func(t *Tx, a *queue.SubscribeArgs) (any, error) {
		id, err := t.Subscribe(*a)
		return &SubscribeResult{Sub: id}, err
	})
	register(TypeUnsubscribe, func(a *UnsubscribeArgs) error { return checkConn("conn", a.Conn) },
		func(t *Tx, a *UnsubscribeArgs) (any, error) {
			return nil, t.Unsubscribe(a.Sub, a.Conn)
		})
	register(TypeConnClosed, func(a *ConnClosedArgs) error { return checkConn("conn", a.Conn) },
		func(t *Tx, a *ConnClosedArgs) (any, error) {
			if err := t.ConnClosed(a.Conn); err != nil {
				return nil, err
			}
			return nil, t.endRegistrations(func(c string) bool { return c == a.Conn })
		})
	register(TypeNodeStarted, func(a *NodeStartedArgs) error { return checkNode("node", a.Node) },
		func(t *Tx, a *NodeStartedArgs) (any, error) {
			if err := t.NodeStarted(a.Node, a.Epoch); err != nil {
				return nil, err
			}
			if err := recordLevel(t.Bolt(), a.Node, a.Level); err != nil {
				return nil, err
			}
			current := fmt.Sprintf("%s/%d/", a.Node, a.Epoch)
			return nil, t.endRegistrations(func(c string) bool {
				return queue.ConnNode(c) == a.Node && !strings.HasPrefix(c, current)
			})
		})
	register(TypeNodeDown, func(a *NodeDownArgs) error { return checkNode("node", a.Node) },
		func(t *Tx, a *NodeDownArgs) (any, error) {
			if err := t.NodeDown(a.Node); err != nil {
				return nil, err
			}
			return nil, t.endRegistrations(func(c string) bool { return queue.ConnNode(c) == a.Node })
		})
}

// Argument checks. The transport checks a client's request against the
// same rules before it builds a command, so only a faulty or hostile peer
// can propose one that fails them. Unchecked, such a command could reach
// bbolt with a key it refuses (an empty queue name), which is not a
// business error and would stop every replica at the same entry, or store
// keys whose 0x00 separators no longer parse, or settings (a dead-letter
// queue with no name) that fail only when a later command uses them. The
// checks read nothing but the arguments, so every replica answers alike;
// they are never stricter than the transport's, so a command it builds
// always passes. A check names the field, never echoes its value.

// badArg is the business error of a command whose argument is invalid.
func badArg(field, rule string) error {
	return fmt.Errorf("%w: %s %s", queue.ErrBadRequest, field, rule)
}

func checkQueue(field, name string) error {
	if !auth.ValidQueueName(name) {
		return badArg(field, "is not a queue name")
	}
	return nil
}

// checkNode accepts a node id: it is the part of a connection id before
// the first '/', and keys separate it from what follows with 0x00.
func checkNode(field, node string) error {
	if node == "" || len(node) > queue.MaxConnLen || strings.ContainsAny(node, "/\x00") {
		return badArg(field, "is not a node id")
	}
	return nil
}

// checkConn accepts a connection id "node/…" as the cluster makes them.
func checkConn(field, conn string) error {
	node, _, ok := strings.Cut(conn, "/")
	if !ok || len(conn) > queue.MaxConnLen || strings.IndexByte(conn, 0) >= 0 || checkNode(field, node) != nil {
		return badArg(field, "is not a connection id")
	}
	return nil
}

// checkSender checks the identity of an envelope, the key of its dedup
// entry, and that there is an envelope at all.
func checkSender(from, id string, env []byte) error {
	switch {
	case !auth.ValidAgentName(from):
		return badArg("from", "is not an agent name")
	case id == "" || len(id) > queue.MaxIDLen:
		return badArg("id", fmt.Sprintf("must be 1 to %d bytes", queue.MaxIDLen))
	case len(env) == 0:
		return badArg("envelope", "is required")
	}
	return nil
}

// firstErr returns the first failed check, so a reply names one field.
func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func checkRange(field string, v, lo, hi int64) error {
	if v < lo || v > hi {
		return badArg(field, fmt.Sprintf("must be between %d and %d", lo, hi))
	}
	return nil
}

func checkEnqueue(a *queue.EnqueueArgs) error {
	return firstErr(
		checkQueue("queue", a.Queue),
		checkSender(a.From, a.ID, a.Env),
		checkRange("delay_ms", a.DelayMs, 0, queue.MaxDelayMs),
		checkRange("priority", int64(a.Priority), 0, queue.MaxPriority),
	)
}

func checkConsume(a *queue.ConsumeArgs) error {
	return firstErr(
		checkQueue("queue", a.Queue),
		checkConn("conn", a.Conn),
		checkRange("prefetch", int64(a.Prefetch), 1, queue.MaxPrefetch),
		checkRange("lease_ms", a.LeaseMs, queue.MinLeaseMs, queue.MaxLeaseMs),
	)
}

// checkSettle checks the fields settle commands of type mt use; the others
// are ignored, as the queue functions ignore them.
func checkSettle(mt MessageType) func(a *queue.SettleArgs) error {
	return func(a *queue.SettleArgs) error {
		errs := []error{
			checkQueue("queue", a.Queue),
			checkConn("conn", a.Conn),
			checkRange("seq", int64(min(a.Seq, queue.MaxSeq+1)), 1, queue.MaxSeq), // no wrap to negative
			checkRange("attempt", int64(a.Attempt), 1, queue.MaxAttempt),
		}
		switch mt {
		case TypeNack:
			if a.DelayMs != nil {
				errs = append(errs, checkRange("delay_ms", *a.DelayMs, 0, queue.MaxDelayMs))
			}
			// A nack's reason is not checked here: nodes of earlier
			// versions ignore the field, and refusing what they accept
			// would split the replicas' replies. The front doors bound
			// it as a reject's; what is stored is clipped.
		case TypeReject:
			if len(a.Reason) > queue.MaxReasonLen {
				errs = append(errs, badArg("reason", fmt.Sprintf("must be at most %d bytes", queue.MaxReasonLen)))
			}
		case TypeExtend:
			errs = append(errs, checkRange("lease_ms", a.LeaseMs, queue.MinLeaseMs, queue.MaxLeaseMs))
		}
		return firstErr(errs...)
	}
}

func checkDeclare(a *queue.DeclareArgs) error {
	errs := []error{checkQueue("queue", a.Queue)}
	if a.MaxAttempts != nil {
		errs = append(errs, checkRange("max_attempts", int64(*a.MaxAttempts), 1, queue.MaxMaxAttempts))
	}
	if len(a.BackoffMs) > queue.MaxBackoffLen {
		errs = append(errs, badArg("backoff_ms", fmt.Sprintf("must have at most %d steps", queue.MaxBackoffLen)))
	} else {
		for _, d := range a.BackoffMs {
			if err := checkRange("backoff_ms", d, 0, queue.MaxDelayMs); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	if a.DLQ != nil {
		errs = append(errs, checkQueue("dlq", *a.DLQ))
	}
	if a.MaxLen != nil {
		errs = append(errs, checkRange("max_len", *a.MaxLen, 0, queue.MaxSeq))
	}
	return firstErr(errs...)
}

func checkPublish(a *queue.PublishArgs) error {
	if !queue.ValidTopic(a.Topic, false) {
		return badArg("topic", "is not a topic")
	}
	return checkSender(a.From, a.ID, a.Env)
}

func checkSubscribe(a *queue.SubscribeArgs) error {
	if !queue.ValidTopic(a.Pattern, true) {
		return badArg("topic", "is not a topic pattern")
	}
	return checkConn("conn", a.Conn)
}
