package fsm

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/route"
	"github.com/mcpd/mcpd/task"
	bolt "go.etcd.io/bbolt"
)

// Every applied command gets one audit entry (package audit), appended in
// the same transaction after its handler ran: a command refused with a
// business error changed nothing else, and its entry records the refusal.
// The entry depends only on the command and the entry's time, so every
// replica appends the same one. Expiries (leases lapsing, delays ending,
// dead-lettering by attempts, dedup entries forgotten) get none: they are
// consequences of earlier audited commands and of the audited entry times,
// and anyone replaying the log reproduces them. Ticks (entries without
// commands) therefore add nothing to the chain.

// auditEvent describes an applied command for its audit entry. args are
// its decoded arguments, res its result, err its business error or nil.
// tx is the state after the command.
func auditEvent(tx *bolt.Tx, now int64, c *Command, args, res any, err error) audit.Event {
	ev := audit.Event{Time: now, Actor: c.Actor, Outcome: "ok", Details: c.Body}
	if err != nil {
		ev.Outcome = errorCode(err)
	}
	switch a := args.(type) {
	case *queue.EnqueueArgs:
		ev.Kind, ev.Subject = "enqueue", a.Queue
		if strings.HasPrefix(a.Queue, "@") {
			ev.Kind = "send"
		}
		// The message it stored (or found stored, for a duplicate).
		if r, ok := res.(*queue.EnqueueResult); ok && err == nil && r.Seq > 0 && ClusterLevel(tx) >= 2 {
			ev.Subject += "/" + strconv.FormatUint(r.Seq, 10)
		}
	case *queue.ConsumeArgs:
		ev.Kind, ev.Subject = "consume", a.Queue
	case *queue.SettleArgs:
		ev.Subject = a.Queue + "/" + strconv.FormatUint(a.Seq, 10)
		switch c.Type {
		case TypeAck:
			ev.Kind = "ack"
		case TypeNack:
			ev.Kind = "nack"
		case TypeReject:
			ev.Kind = "reject"
		case TypeExtend:
			ev.Kind = "extend"
		}
	case *queue.CancelArgs:
		ev.Kind, ev.Subject = "cancel", strconv.FormatUint(a.Consumer, 10)
	case *queue.DeclareArgs:
		ev.Kind, ev.Subject = "queue.declare", a.Queue
	case *QueueRedriveArgs:
		ev.Kind, ev.Subject = "queue.redrive", redriveSubject(a, res)
	case *MessageDeleteArgs:
		ev.Kind, ev.Subject = "queue.delete", deleteSubject(a, res)
	case *queue.PublishArgs:
		ev.Kind, ev.Subject = "publish", a.Topic
	case *queue.SubscribeArgs:
		ev.Kind, ev.Subject = "subscribe", a.Pattern
	case *UnsubscribeArgs:
		ev.Kind, ev.Subject = "unsubscribe", strconv.FormatUint(a.Sub, 10)
	case *ConnClosedArgs:
		ev.Kind, ev.Subject = "conn.closed", a.Conn
	case *NodeStartedArgs:
		ev.Kind, ev.Subject = "node.started", a.Node
	case *NodeDownArgs:
		ev.Kind, ev.Subject = "node.down", a.Node
	case *AgentAddArgs:
		ev.Kind, ev.Subject = "agent.add", a.Agent.Name
	case *AgentRevokeArgs:
		ev.Kind, ev.Subject = "agent.revoke", a.Name
	case *AuthEventArgs:
		// The event is the record: its own kind, agent and subject, and
		// its error code as the outcome.
		ev.Kind, ev.Actor, ev.Subject = a.Kind, a.Agent, a.Subject
		if err == nil && a.Code != "" {
			ev.Outcome = a.Code
		}
	case *RedisArgs:
		switch {
		case a.Multi != nil:
			ev.Kind, ev.Subject = "redis.exec", strconv.Itoa(len(a.Multi))+" commands"
		case len(a.Args) == 0:
			// A command refused for having no name: left with the
			// default kind below.
		default:
			ev.Kind = "redis." + strings.ToLower(string(a.Args[0]))
			if len(a.Args) > 1 {
				ev.Subject = string(a.Args[1])
			}
		}
		if r, ok := res.(*RedisResult); ok && r.Value.IsErr() {
			ev.Outcome = "redis_error"
		}
	case *AuditCheckpointArgs:
		ev.Kind, ev.Subject = audit.KindCheckpoint, audit.CheckpointSubject(a.Seq)
	case *RestoreRecordArgs:
		// The operator's restore, recorded by whichever leader proposes
		// it: the actor and subject are the mark's. A refused record (one
		// proposed again) is no restore.
		ev.Kind, ev.Actor, ev.Subject = "snapshot.restore", a.Actor, a.Subject
		if err != nil {
			ev.Kind, ev.Subject = "restore.record", a.ID
		}
	case *ClusterLevelArgs:
		ev.Kind, ev.Subject = "cluster.level", strconv.Itoa(a.Level)
	case *AuditPruneArgs:
		// The base the step reached (what Verify looks for), or the
		// seq asked for when it was refused.
		ev.Kind, ev.Subject = audit.KindPrune, audit.PruneSubject(a.Through)
		if r, ok := res.(*audit.PruneResult); ok && r != nil && err == nil {
			ev.Subject = audit.PruneSubject(r.Base)
		}
	case *route.RegisterArgs:
		ev.Kind, ev.Subject = "register", a.Agent
	case *task.SubmitArgs:
		ev.Kind, ev.Subject = "task.submit", a.Parent
		if r, ok := res.(*SubmitResult); ok && r != nil {
			ev.Subject = r.Root
		}
	case *task.SettleArgs:
		ev.Kind, ev.Subject = "task.done", a.Task+"/"+strconv.Itoa(a.Attempt)
		if c.Type == TypeTaskFail {
			ev.Kind = "task.fail"
		}
	case *task.CancelArgs:
		ev.Kind, ev.Subject = "task.cancel", a.Task
	case *task.DecideArgs:
		ev.Kind, ev.Subject = "task.deny", a.Task
		if a.Approve {
			ev.Kind = "task.approve"
		}
	case *TaskPruneArgs:
		// The roots are in the details; the subject says what went.
		ev.Kind, ev.Subject = "task.prune", fmt.Sprintf("%d roots", len(a.Roots))
		if r, ok := res.(*task.PruneResult); ok && r != nil {
			ev.Subject = fmt.Sprintf("%d trees, %d tasks", r.Graphs, r.Tasks)
		}
	case *CapSensitiveArgs:
		ev.Kind, ev.Subject = "capability.sensitive", a.Cap
		if !a.On {
			ev.Kind = "capability.plain"
		}
	case *ScheduleAddArgs:
		ev.Kind, ev.Subject = "schedule.add", a.Schedule.Name
	case *ScheduleSetArgs:
		ev.Kind, ev.Subject = "schedule."+a.What, a.Name
	case *OperatorInviteArgs:
		ev.Kind, ev.Subject = "operator.invite", a.Name
	case *OperatorEnrollArgs, *OperatorLogoutArgs:
		// The operator is known from the invite or the session only.
		ev.Kind = "operator.enroll"
		if _, ok := a.(*OperatorLogoutArgs); ok {
			ev.Kind = "operator.logout"
		}
		if r, ok := res.(*OperatorResult); ok && r != nil {
			ev.Subject = r.Name
		}
	case *OperatorUseArgs:
		ev.Kind, ev.Subject = "operator.reauth", a.Name
		if a.Session != nil {
			ev.Kind = "operator.login"
		}
	case *OperatorRemoveArgs:
		ev.Kind, ev.Subject = "operator.remove", a.Name
	case *ScheduleFireArgs:
		ev.Kind, ev.Subject = "schedule.fire", a.Name+"@"+strconv.FormatInt(a.Tick, 10)
		if a.Skip {
			ev.Kind = "schedule.skip"
		}
	}
	if ev.Kind == "" {
		// A type added without a case above still gets a stable kind.
		ev.Kind = "type." + strconv.Itoa(int(c.Type))
	}
	return ev
}

// errorCodes names the business errors, in the order they are matched (an
// error wraps one of them).
var errorCodes = []struct {
	err  error
	code string
}{
	{queue.ErrNotFound, "not_found"},
	{queue.ErrFull, "full"},
	{queue.ErrConflict, "conflict"},
	{queue.ErrBadRequest, "bad_request"},
	{ErrCycle, "cycle"},
	{queue.ErrForbidden, "forbidden"},
}

func errorCode(err error) string {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "error"
}

// NewAuditCheckpoint is the command that records a signed checkpoint.
func NewAuditCheckpoint(c audit.Checkpoint) (Command, error) {
	return NewCommand(TypeAuditCheckpoint, "", 0, AuditCheckpointOf(c))
}

// AuditCheckpointOf is the body of the command recording c.
func AuditCheckpointOf(c audit.Checkpoint) *AuditCheckpointArgs {
	return &AuditCheckpointArgs{Seq: c.Seq, Hash: c.Hash[:], Public: c.Public, Sig: c.Sig}
}

func init() {
	register(TypeAuditCheckpoint, func(a *AuditCheckpointArgs) error {
		if a.Seq == 0 || len(a.Hash) != 32 || len(a.Public) != ed25519.PublicKeySize || len(a.Sig) != ed25519.SignatureSize {
			return badArg("checkpoint", "has a field out of range")
		}
		return nil
	}, func(t *Tx, a *AuditCheckpointArgs) (any, error) {
		// ed25519.Verify is deterministic: every replica agrees.
		err := audit.AddCheckpoint(t.Bolt(), audit.Checkpoint{Seq: a.Seq, Hash: [32]byte(a.Hash), Public: a.Public, Sig: a.Sig})
		switch {
		case errors.Is(err, audit.ErrBadCheckpoint):
			return nil, fmt.Errorf("%w: %w", queue.ErrBadRequest, err)
		case errors.Is(err, audit.ErrStaleCheckpoint):
			return nil, conflict(err)
		}
		return nil, err
	})
}

// TypeAuditPrune removes the start of the audit chain (audit.Prune),
// for an operator who exported it: one bounded step per command.
const TypeAuditPrune MessageType = 38

// AuditPruneArgs is one prune step: entries up to Through, at most Max
// of them.
type AuditPruneArgs struct {
	Through uint64 `msgpack:"t"`
	Max     int    `msgpack:"m"`
}

// MaxAuditPruneStep bounds the entries one command removes, so its
// transaction and apply stay small.
const MaxAuditPruneStep = 50_000

func init() {
	register(TypeAuditPrune, func(a *AuditPruneArgs) error {
		return firstErr(checkSeq("through", a.Through), checkRange("max", int64(a.Max), 1, MaxAuditPruneStep))
	}, func(t *Tx, a *AuditPruneArgs) (any, error) {
		r, err := audit.Prune(t.Bolt(), a.Through, a.Max)
		if errors.Is(err, audit.ErrPruneRange) {
			return nil, conflict(err)
		}
		return &r, err
	})
}

// AuditHead is the head of the audit chain as applied.
func (f *FSM) AuditHead() (h audit.Head, err error) {
	err = f.View(func(tx *bolt.Tx) error {
		h, err = audit.ReadHead(tx)
		return err
	})
	return h, err
}

// ViewCommitted runs fn on a read-only transaction of what state.db has
// committed, which trails the applied entries by at most the flush
// interval (Flush first to include them). Unlike View it does not hold up
// applies while fn runs: it suits long reads such as verifying or
// exporting the audit log of a running node. A snapshot restore waits
// for fn to return.
func (f *FSM) ViewCommitted(fn func(tx *bolt.Tx) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.db.View(fn)
}
