package fsm

import (
	"fmt"

	"github.com/mcpd/mcpd/internal/mpack"
	"github.com/mcpd/mcpd/queue"
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

// handler applies one decoded command. It returns the result for the
// reply and a business error; anything else it cannot handle is a bug and
// panics in the caller.
type handler func(t *queue.Tx, body []byte) (any, error)

var handlers = map[MessageType]handler{}

// register adds a typed handler to the dispatch table.
func register[A any](mt MessageType, fn func(t *queue.Tx, a *A) (any, error)) {
	handlers[mt] = func(t *queue.Tx, body []byte) (any, error) {
		a := new(A)
		if err := mpack.Unmarshal(body, a); err != nil {
			panic(fmt.Sprintf("fsm: cannot decode command type %d: %v", mt, err))
		}
		return fn(t, a)
	}
}

func init() {
	register(TypeEnqueue, func(t *queue.Tx, a *queue.EnqueueArgs) (any, error) {
		r, err := t.Enqueue(*a)
		return &r, err
	})
	register(TypeConsume, func(t *queue.Tx, a *queue.ConsumeArgs) (any, error) {
		id, err := t.Consume(*a)
		return &ConsumeResult{Consumer: id}, err
	})
	register(TypeAck, func(t *queue.Tx, a *queue.SettleArgs) (any, error) {
		return nil, t.Ack(*a)
	})
	register(TypeNack, func(t *queue.Tx, a *queue.SettleArgs) (any, error) {
		return nil, t.Nack(*a)
	})
	register(TypeReject, func(t *queue.Tx, a *queue.SettleArgs) (any, error) {
		return nil, t.Reject(*a)
	})
	register(TypeExtend, func(t *queue.Tx, a *queue.SettleArgs) (any, error) {
		until, err := t.Extend(*a)
		return &ExtendResult{LeaseUntil: until}, err
	})
	register(TypeCancel, func(t *queue.Tx, a *queue.CancelArgs) (any, error) {
		return nil, t.Cancel(*a)
	})
	register(TypeDeclare, func(t *queue.Tx, a *queue.DeclareArgs) (any, error) {
		s, err := t.Declare(*a)
		return &s, err
	})
	register(TypePublish, func(t *queue.Tx, a *queue.PublishArgs) (any, error) {
		r, err := t.Publish(*a)
		return &r, err
	})
	register(TypeSubscribe, func(t *queue.Tx, a *queue.SubscribeArgs) (any, error) {
		id, err := t.Subscribe(*a)
		return &SubscribeResult{Sub: id}, err
	})
	register(TypeUnsubscribe, func(t *queue.Tx, a *UnsubscribeArgs) (any, error) {
		return nil, t.Unsubscribe(a.Sub, a.Conn)
	})
	register(TypeConnClosed, func(t *queue.Tx, a *ConnClosedArgs) (any, error) {
		return nil, t.ConnClosed(a.Conn)
	})
	register(TypeNodeStarted, func(t *queue.Tx, a *NodeStartedArgs) (any, error) {
		return nil, t.NodeStarted(a.Node, a.Epoch)
	})
	register(TypeNodeDown, func(t *queue.Tx, a *NodeDownArgs) (any, error) {
		return nil, t.NodeDown(a.Node)
	})
}
