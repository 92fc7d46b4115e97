package transport

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// Limits of request fields (PROTOCOL.md).
const (
	maxDelayMs    = 30 * 24 * 3600 * 1000
	minLeaseMs    = 100
	maxLeaseMs    = 3_600_000
	defLeaseMs    = 30_000
	maxPrefetch   = 1000
	maxBackoffLen = 32
	maxReasonLen  = 1024
)

type opHandler func(c *conn, r *request) error

var ops map[string]opHandler

func init() {
	ops = map[string]opHandler{
		"auth":          (*conn).opAuth,
		"ping":          (*conn).opPing,
		"enqueue":       (*conn).opEnqueue,
		"send":          (*conn).opSend,
		"consume":       (*conn).opConsume,
		"ack":           settleOp(fsm.TypeAck),
		"nack":          settleOp(fsm.TypeNack),
		"reject":        settleOp(fsm.TypeReject),
		"extend":        settleOp(fsm.TypeExtend),
		"cancel":        (*conn).opCancel,
		"queue.declare": (*conn).opDeclare,
		"queue.info":    (*conn).opInfo,
		"publish":       (*conn).opPublish,
		"subscribe":     (*conn).opSubscribe,
		"unsubscribe":   (*conn).opUnsubscribe,
		"agent.key":     (*conn).opAgentKey,
		// Delegation (tasks.go).
		"register":     (*conn).opRegister,
		"agents":       (*conn).opAgents,
		"task.submit":  (*conn).opTaskSubmit,
		"task.done":    taskSettleOp(fsm.TypeTaskDone),
		"task.fail":    taskSettleOp(fsm.TypeTaskFail),
		"task.get":     (*conn).opTaskGet,
		"task.cancel":  (*conn).opTaskCancel,
		"task.watch":   (*conn).opTaskWatch,
		"task.unwatch": (*conn).opTaskUnwatch,
	}
}

// handle decodes and runs one request frame.
func (c *conn) handle(data []byte) {
	r, err := parseRequest(data)
	if r == nil || r.rid == nil || !validRid(r.rid) {
		c.sendErr(nil, "bad_request", err.Error(), false)
		return
	}
	if err != nil {
		c.sendErr(r.rid, "bad_request", err.Error(), false)
		return
	}
	h, ok := ops[r.op]
	if !ok {
		c.sendErr(r.rid, "bad_request", fmt.Sprintf("unknown op %q", r.op), false)
		return
	}
	if r.op != "auth" && !c.authed.Load() {
		c.sendErr(r.rid, "unauthenticated", "authenticate first: send auth", false)
		return
	}
	if r.op != "auth" && c.limited(len(data)) {
		c.sendErr(r.rid, "rate_limited", "this agent's rate limit is exhausted; slow down and retry", false)
		return
	}
	if err := h(c, r); err != nil {
		code, msg := errorCode(err)
		c.sendErr(r.rid, code, msg, false)
		if r.op == "auth" && (code == "unauthenticated" || code == "bad_signature") {
			if c.authFails++; c.authFails >= maxAuthFails {
				c.closeWith(CloseAuthTimeout, "too many failed authentication attempts")
			}
		}
	}
}

// protoError carries an explicit protocol code.
type protoError struct {
	code string
	msg  string
}

func (e *protoError) Error() string { return e.msg }

func perr(code, format string, args ...any) error {
	return &protoError{code: code, msg: fmt.Sprintf(format, args...)}
}

// errorCode maps an error to a protocol code and message.
func errorCode(err error) (string, string) {
	var pe *protoError
	var fe *fieldError
	switch {
	case errors.As(err, &pe):
		return pe.code, pe.msg
	case errors.As(err, &fe):
		return "bad_request", fe.msg
	case errors.Is(err, auth.ErrWrongSender), errors.Is(err, queue.ErrForbidden):
		return "forbidden", err.Error()
	case errors.Is(err, auth.ErrSkew):
		return "replay", err.Error()
	case errors.Is(err, auth.ErrBadSignature):
		return "bad_signature", err.Error()
	case errors.Is(err, auth.ErrBadEnvelope), errors.Is(err, queue.ErrBadRequest):
		return "bad_request", err.Error()
	case errors.Is(err, queue.ErrNotFound) && err.Error() != queue.ErrNotFound.Error():
		return "not_found", err.Error()
	case errors.Is(err, queue.ErrNotFound):
		return "not_found", "no such delivery, consumer or subscription on this connection"
	case errors.Is(err, queue.ErrFull) && err.Error() != queue.ErrFull.Error():
		return "full", err.Error()
	case errors.Is(err, queue.ErrFull):
		return "full", "queue is at its max_len"
	case errors.Is(err, queue.ErrConflict):
		return "conflict", err.Error()
	case errors.Is(err, fsm.ErrCycle):
		return "cycle", err.Error()
	case errors.Is(err, cluster.ErrUnavailable), errors.Is(err, cluster.ErrUnknown), errors.Is(err, cluster.ErrShutdown):
		return "unavailable", err.Error()
	default:
		return "internal", err.Error()
	}
}

// submit proposes a command answering request r; the reply is produced
// when this node applies it, or here when the submission fails.
func (c *conn) submit(r *request, t fsm.MessageType, body any) error {
	req := c.addPending(r.rid)
	cmd, err := fsm.NewCommand(t, c.id, req, body)
	if err != nil {
		c.takePending(req)
		return err
	}
	cmd.Actor = c.agent
	// Queued from the reader goroutine, so one connection's commands reach
	// the log in the order it sent them.
	start := time.Now()
	c.s.node.SubmitAsync(cmd, func(err error) {
		observeSubmit(c.s.node, transportWebSocket, r.op, start, err)
		if err == nil {
			return
		}
		if rid, ok := c.takePending(req); ok {
			code, msg := errorCode(err)
			unknown := errors.Is(err, cluster.ErrUnknown) || errors.Is(err, cluster.ErrShutdown)
			c.sendErr(rid, code, msg, unknown)
		}
	})
	return nil
}

func (c *conn) opAuth(r *request) error {
	if c.authed.Load() {
		return badField("already authenticated")
	}
	agent, err := r.str("agent", true)
	if err != nil {
		return err
	}
	if !auth.ValidAgentName(agent) {
		return badField("agent must be 1 to 64 bytes of [A-Za-z0-9._-]")
	}
	alg, err := r.str("alg", true)
	if err != nil {
		return err
	}
	switch alg {
	case "none":
		if !c.s.opt.Dev {
			c.s.audit.record(c, fsm.AuthEventArgs{Kind: "auth.fail", Agent: agent, Code: "unauthenticated", Detail: "alg none outside dev mode"})
			return perr("unauthenticated", "alg \"none\" is accepted in dev mode only")
		}
		c.agent = agent
		c.ident = &identity{}
		c.s.audit.record(c, fsm.AuthEventArgs{Kind: "auth.ok", Agent: agent, Detail: "none"})
	case "ed25519", "hmac-sha256":
		if err := c.authWithKey(r, agent, alg); err != nil {
			return err
		}
		c.s.audit.record(c, fsm.AuthEventArgs{Kind: "auth.ok", Agent: agent, Detail: alg})
	default:
		return badField("alg must be ed25519, hmac-sha256 or none")
	}
	c.id = c.s.node.NewConn(c)
	c.authed.Store(true)
	c.sendOK(r.rid, "agent", agent)
	return nil
}

func (c *conn) opPing(r *request) error {
	var leader any
	if l := c.s.node.Leader(); l != "" {
		leader = l
	}
	c.sendOK(r.rid, "node", c.s.node.ID(), "leader", leader, "time", c.s.node.Now())
	return nil
}

// envelope parses and checks the msg field.
func (c *conn) envelope(r *request) (*auth.Envelope, error) {
	raw, err := r.raw("msg")
	if err != nil {
		return nil, err
	}
	env, err := auth.ParseEnvelope(raw)
	if err != nil {
		return nil, err
	}
	if err := c.checkEnvelope(env); err != nil {
		return nil, err
	}
	return env, nil
}

// queueName reads and checks a queue field; inboxes belong to their agent.
func (c *conn) queueName(r *request, field string) (string, error) {
	name, err := r.str(field, true)
	if err != nil {
		return "", err
	}
	if !auth.ValidQueueName(name) {
		return "", badField("%s must be 1 to 200 bytes of [A-Za-z0-9._-] (or an inbox @NAME)", field)
	}
	if auth.IsInbox(name) && !auth.InboxAllowed(name, c.agent) {
		return "", perr("forbidden", "inbox %s belongs to another agent", name)
	}
	return name, nil
}

func (c *conn) opEnqueue(r *request) error {
	name, err := c.queueName(r, "queue")
	if err != nil {
		return err
	}
	if auth.IsInbox(name) {
		return perr("forbidden", "enqueue to an inbox is not allowed; use send")
	}
	if err := c.allow(auth.OpEnqueue, name); err != nil {
		return err
	}
	return c.enqueue(r, name)
}

func (c *conn) opSend(r *request) error {
	to, err := r.str("to", true)
	if err != nil {
		return err
	}
	if !auth.ValidAgentName(to) {
		return badField("to must be an agent name")
	}
	if err := c.allow(auth.OpSend, to); err != nil {
		return err
	}
	return c.enqueue(r, "@"+to)
}

func (c *conn) enqueue(r *request, name string) error {
	delay, err := r.int("delay_ms", false, 0, maxDelayMs, 0)
	if err != nil {
		return err
	}
	pri, err := r.int("priority", false, 0, 9, 0)
	if err != nil {
		return err
	}
	env, err := c.envelope(r)
	if err != nil {
		return err
	}
	return c.submit(r, fsm.TypeEnqueue, &queue.EnqueueArgs{
		Queue: name, From: env.From, ID: env.ID, Hash: env.Hash, Env: env.Raw, DelayMs: delay, Priority: uint8(pri),
	})
}

func (c *conn) opConsume(r *request) error {
	name, err := c.queueName(r, "queue")
	if err != nil {
		return err
	}
	prefetch, err := r.int("prefetch", false, 1, maxPrefetch, 1)
	if err != nil {
		return err
	}
	lease, err := r.int("lease_ms", false, minLeaseMs, maxLeaseMs, defLeaseMs)
	if err != nil {
		return err
	}
	if !auth.IsInbox(name) {
		if err := c.allow(auth.OpConsume, name); err != nil {
			return err
		}
	}
	return c.submit(r, fsm.TypeConsume, &queue.ConsumeArgs{Queue: name, Conn: c.id, Prefetch: int(prefetch), LeaseMs: lease})
}

func settleOp(t fsm.MessageType) opHandler {
	return func(c *conn, r *request) error {
		name, err := c.queueName(r, "queue")
		if err != nil {
			return err
		}
		seq, err := r.int("seq", true, 1, 1<<53, 0)
		if err != nil {
			return err
		}
		attempt, err := r.int("attempt", true, 1, 1<<31, 0)
		if err != nil {
			return err
		}
		a := &queue.SettleArgs{Queue: name, Seq: uint64(seq), Attempt: int(attempt), Conn: c.id}
		switch t {
		case fsm.TypeNack:
			if r.has("delay_ms") {
				d, err := r.int("delay_ms", true, 0, maxDelayMs, 0)
				if err != nil {
					return err
				}
				a.DelayMs = &d
			}
			fallthrough
		case fsm.TypeReject:
			if a.Reason, err = r.str("reason", false); err != nil {
				return err
			}
			if len(a.Reason) > maxReasonLen {
				return badField("reason must be at most %d bytes", maxReasonLen)
			}
		case fsm.TypeExtend:
			if a.LeaseMs, err = r.int("lease_ms", true, minLeaseMs, maxLeaseMs, 0); err != nil {
				return err
			}
		}
		return c.submit(r, t, a)
	}
}

// idField reads a "c12" / "s7" style id; a malformed one is simply unknown.
func idField(r *request, field string, prefix byte) (uint64, bool, error) {
	s, err := r.str(field, true)
	if err != nil {
		return 0, false, err
	}
	if len(s) < 2 || s[0] != prefix {
		return 0, false, nil
	}
	n, err := strconv.ParseUint(s[1:], 10, 64)
	return n, err == nil, nil
}

func (c *conn) opCancel(r *request) error {
	id, ok, err := idField(r, "consumer", 'c')
	if err != nil {
		return err
	}
	if !ok {
		return queue.ErrNotFound
	}
	return c.submit(r, fsm.TypeCancel, &queue.CancelArgs{Consumer: id, Conn: c.id})
}

func (c *conn) opDeclare(r *request) error {
	name, err := c.queueName(r, "queue")
	if err != nil {
		return err
	}
	if err := c.allowQueue(name); err != nil {
		return err
	}
	a := &queue.DeclareArgs{Queue: name}
	if r.has("max_attempts") {
		n, err := r.int("max_attempts", true, 1, 1000, 0)
		if err != nil {
			return err
		}
		m := int(n)
		a.MaxAttempts = &m
	}
	if r.has("backoff_ms") {
		var list []json.RawMessage
		if err := json.Unmarshal(r.fields["backoff_ms"], &list); err != nil || len(list) > maxBackoffLen {
			return badField("backoff_ms must be an array of at most %d integers", maxBackoffLen)
		}
		a.SetBackoff = true
		a.BackoffMs = make([]int64, 0, len(list))
		for i, v := range list {
			sub := &request{fields: map[string]json.RawMessage{"v": v}}
			d, err := sub.int("v", true, 0, maxDelayMs, 0)
			if err != nil {
				return badField("backoff_ms[%d] must be an integer between 0 and %d", i, maxDelayMs)
			}
			a.BackoffMs = append(a.BackoffMs, d)
		}
	}
	if r.has("dlq") {
		d, err := c.queueName(r, "dlq")
		if err != nil {
			return err
		}
		if err := c.allowQueue(d); err != nil {
			return err
		}
		a.DLQ = &d
	}
	if _, ok := r.fields["max_len"]; ok {
		var n int64
		if r.has("max_len") {
			if n, err = r.int("max_len", true, 1, 1<<53, 0); err != nil {
				return err
			}
		}
		a.MaxLen = &n
	}
	return c.submit(r, fsm.TypeDeclare, a)
}

// opInfo reads this node's applied state; a follower may trail the leader
// by the entries it has not applied yet.
func (c *conn) opInfo(r *request) error {
	name, err := c.queueName(r, "queue")
	if err != nil {
		return err
	}
	if err := c.allowQueue(name); err != nil {
		return err
	}
	var info queue.Info
	if err := c.s.node.Read(func(tx *bolt.Tx) error {
		info, err = queue.ReadInfo(tx, name)
		return err
	}); err != nil {
		return err
	}
	c.sendOK(r.rid, "ready", info.Ready, "inflight", info.Inflight, "delayed", info.Delayed, "dead", info.Dead, "consumers", info.Consumers)
	return nil
}

func (c *conn) opPublish(r *request) error {
	topic, err := r.str("topic", true)
	if err != nil {
		return err
	}
	if !queue.ValidTopic(topic, false) {
		return badField("topic must be at most 512 bytes of dot-separated, non-empty tokens of [A-Za-z0-9_-], without wildcards")
	}
	if err := c.allow(auth.OpPublish, topic); err != nil {
		return err
	}
	env, err := c.envelope(r)
	if err != nil {
		return err
	}
	return c.submit(r, fsm.TypePublish, &queue.PublishArgs{Topic: topic, From: env.From, ID: env.ID, Hash: env.Hash, Env: env.Raw})
}

func (c *conn) opSubscribe(r *request) error {
	topic, err := r.str("topic", true)
	if err != nil {
		return err
	}
	if !queue.ValidTopic(topic, true) {
		return badField("topic must be at most 512 bytes of dot-separated, non-empty tokens of [A-Za-z0-9_-], '*' or a final '>'")
	}
	if err := c.allow(auth.OpSubscribe, topic); err != nil {
		return err
	}
	return c.submit(r, fsm.TypeSubscribe, &queue.SubscribeArgs{Pattern: topic, Conn: c.id})
}

func (c *conn) opUnsubscribe(r *request) error {
	id, ok, err := idField(r, "sub", 's')
	if err != nil {
		return err
	}
	if !ok {
		return queue.ErrNotFound
	}
	return c.submit(r, fsm.TypeUnsubscribe, &fsm.UnsubscribeArgs{Sub: id, Conn: c.id})
}
