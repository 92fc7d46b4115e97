package cluster

import (
	"context"
	"fmt"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
)

// SetNodeSink installs the receiver of effects addressed to the node
// rather than to a connection, such as fsm.AgentRevoked.
func (n *Node) SetNodeSink(s Sink) {
	n.connsMu.Lock()
	n.conns[""] = s
	n.connsMu.Unlock()
}

// callSink receives the reply of one Call.
type callSink chan *fsm.Reply

func (c callSink) Push(e queue.Effect) {
	if r, ok := e.(*fsm.Reply); ok {
		select {
		case c <- r:
		default:
		}
	}
}

// Call proposes a command on behalf of actor (for the audit log) and
// waits until this node has applied it, returning its reply. It is for
// requests that hold no connection, such as the admin API's: the
// command names a connection id that exists only for the call and owns
// nothing afterwards (the command types it is used for create no
// consumers, subscriptions or leases).
func (n *Node) Call(ctx context.Context, t fsm.MessageType, actor string, body any) (*fsm.Reply, error) {
	return n.call(ctx, t, actor, body, true)
}

// call is Call; checkLevel false skips the members' levels, for a
// proposer that checked them otherwise (RecordRestore).
func (n *Node) call(ctx context.Context, t fsm.MessageType, actor string, body any, checkLevel bool) (*fsm.Reply, error) {
	// A type some member's version does not know would stop it.
	if checkLevel {
		if err := n.MembersApply(t); err != nil {
			return nil, err
		}
	}
	ch := make(callSink, 1)
	id := fmt.Sprintf("%s/%d/call%d", n.cfg.NodeID, n.epoch, n.connSeq.Add(1))
	n.connsMu.Lock()
	n.conns[id] = ch
	n.connsMu.Unlock()
	defer func() {
		n.connsMu.Lock()
		delete(n.conns, id)
		n.connsMu.Unlock()
	}()
	cmd, err := fsm.NewCommand(t, id, 1, body)
	if err != nil {
		return nil, err
	}
	cmd.Actor = actor
	if err := n.Submit(ctx, cmd); err != nil {
		return nil, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: committed, but not applied on this node before the deadline: %v", ErrUnknown, ctx.Err())
	case <-n.shutdownCh:
		return nil, ErrShutdown
	}
}
