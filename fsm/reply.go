package fsm

import (
	"errors"
	"fmt"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/internal/mpack"
	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/task"
	"github.com/vmihailenco/msgpack/v5"
)

// The leader hands the replies of a forwarded entry back to the follower
// that holds the clients' connections, so those clients hear the outcome
// as soon as it is committed and applied on the leader, without waiting
// for the follower to learn the commit index.

// businessErrors are the errors a Reply may carry, by their wire name.
var businessErrors = map[string]error{
	"not_found":   queue.ErrNotFound,
	"full":        queue.ErrFull,
	"conflict":    queue.ErrConflict,
	"bad_request": queue.ErrBadRequest,
	"forbidden":   queue.ErrForbidden,
	"cycle":       ErrCycle,
}

type wireReply struct {
	Conn string             `msgpack:"c"`
	Req  uint64             `msgpack:"r"`
	Type MessageType        `msgpack:"t"`
	Err  string             `msgpack:"e,omitempty"`
	Msg  string             `msgpack:"m,omitempty"`
	Res  msgpack.RawMessage `msgpack:"x,omitempty"`
}

// newResult returns an empty result of a command type, or nil for types
// whose reply carries none.
func newResult(t MessageType) any {
	switch t {
	case TypeEnqueue:
		return &EnqueueResult{}
	case TypeConsume:
		return &ConsumeResult{}
	case TypeExtend:
		return &ExtendResult{}
	case TypeDeclare:
		return &DeclareResult{}
	case TypePublish:
		return &PublishResult{}
	case TypeSubscribe:
		return &SubscribeResult{}
	case TypeAgentAdd, TypeAgentRevoke:
		return &AgentResult{}
	case TypeRedis:
		return &RedisResult{}
	case TypeQueueRedrive:
		return &QueueRedriveResult{}
	case TypeMessageDelete:
		return &MessageDeleteResult{}
	case TypeTaskSubmit:
		return &SubmitResult{}
	case TypeTaskCancel:
		return &CancelResult{}
	case TypeScheduleFire:
		return &FireResult{}
	case TypeScheduleAdd, TypeScheduleSet:
		return &ScheduleResult{}
	case TypeTaskDecide:
		return &TaskResult{}
	case TypeTaskPrune:
		return &task.PruneResult{}
	case TypeAuditPrune:
		return &audit.PruneResult{}
	case TypeClusterLevel:
		return &ClusterLevelResult{}
	case TypeOperatorInvite, TypeOperatorEnroll, TypeOperatorLogout:
		return &OperatorResult{}
	}
	return nil
}

// EncodeReplies serialises replies for a follower.
func EncodeReplies(rs []*Reply) ([]byte, error) {
	ws := make([]wireReply, len(rs))
	for i, r := range rs {
		w := wireReply{Conn: r.Conn, Req: r.Req, Type: r.Type}
		if r.Err != nil {
			w.Msg = r.Err.Error()
			for name, sentinel := range businessErrors {
				if errors.Is(r.Err, sentinel) {
					w.Err = name
				}
			}
		} else if r.Result != nil {
			raw, err := msgpack.Marshal(r.Result)
			if err != nil {
				return nil, err
			}
			w.Res = raw
		}
		ws[i] = w
	}
	return msgpack.Marshal(ws)
}

// DecodeReplies is the inverse of EncodeReplies.
func DecodeReplies(b []byte) ([]*Reply, error) {
	var ws []wireReply
	if err := mpack.Unmarshal(b, &ws); err != nil {
		return nil, err
	}
	rs := make([]*Reply, len(ws))
	for i, w := range ws {
		r := &Reply{Conn: w.Conn, Req: w.Req, Type: w.Type}
		if w.Err != "" || w.Msg != "" {
			sentinel, ok := businessErrors[w.Err]
			if !ok {
				sentinel = queue.ErrBadRequest
			}
			r.Err = sentinel
			if w.Msg != sentinel.Error() {
				r.Err = &detailed{sentinel: sentinel, msg: w.Msg}
			}
		} else if res := newResult(w.Type); res != nil && w.Res != nil {
			if err := mpack.Unmarshal(w.Res, res); err != nil {
				return nil, err
			}
			r.Result = res
		}
		rs[i] = r
	}
	return rs, nil
}

// RepliedOnApply reports whether a command's reply must wait until the
// node holding the connection has applied it: its ok must precede the
// pushes that the same node produces afterwards (consume, subscribe), or
// the pushes it ends must not follow it (cancel, unsubscribe), or what it
// changed must be visible on that node when the reply arrives.
func RepliedOnApply(t MessageType) bool {
	switch t {
	case TypeConsume, TypeSubscribe, TypeCancel, TypeUnsubscribe:
		return true
	case TypeAgentAdd, TypeAgentRevoke:
		// An operator who added an agent may connect it to this node at
		// once; one who revoked it expects its connections here closed.
		return true
	case TypeRedis:
		// A Redis client reads its own writes from this node.
		return true
	case TypeTaskDecide:
		// An approved task is routed in the same entry; the operator
		// is answered with the task as this node then holds it.
		return true
	case TypeQueueRedrive, TypeMessageDelete, TypeAuditPrune:
		// An operator who redrove or deleted messages peeks at the queue
		// on the same node next; one who pruned the audit log verifies
		// it there, and the next step reads its base there.
		return true
	case TypeAuthEvent:
		// An operator's snapshot save records its audit entry first and
		// then copies this node's state.db: the copy must hold every
		// command acknowledged before the request, so the entry must be
		// applied here, not only on the leader, when the reply arrives.
		// Auth decisions a node records itself are sent without a reply.
		return true
	}
	return false
}

// detailed is a business error with its original message.
type detailed struct {
	sentinel error
	msg      string
}

func (e *detailed) Error() string { return e.msg }
func (e *detailed) Unwrap() error { return e.sentinel }

// conflict is err as a queue.ErrConflict (the reply code "conflict")
// with err's own message: that sentinel's text is about envelope ids,
// and err says what conflicts. errors.Is finds both.
func conflict(err error) error { return &conflictErr{err} }

type conflictErr struct{ err error }

func (e *conflictErr) Error() string   { return e.err.Error() }
func (e *conflictErr) Unwrap() []error { return []error{queue.ErrConflict, e.err} }

// conflictf is conflict of a new message.
func conflictf(format string, args ...any) error { return conflict(fmt.Errorf(format, args...)) }
