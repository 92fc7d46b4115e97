package fsm

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/route"
	"github.com/mcpd/mcpd/task"
)

// Delegation commands (docs/delegation.md): presence, task graphs and
// their attempts, operator decisions.
const (
	TypeRegister     MessageType = 20 // an agent registers capabilities on a connection
	TypeTaskSubmit   MessageType = 21 // a graph of tasks
	TypeTaskDone     MessageType = 22 // an attempt's output
	TypeTaskFail     MessageType = 23 // an attempt's failure
	TypeTaskCancel   MessageType = 24 // a task or graph cancelled
	TypeTaskDecide   MessageType = 25 // an operator approves or denies a held task
	TypeCapSensitive MessageType = 26 // an operator marks a capability sensitive or not
	TypeTaskPrune    MessageType = 37 // the leader removes task trees past the retention
)

// TaskPruneArgs removes the trees of the root graphs named that ended
// RetentionMs or longer before the command's time (task.Prune checks each
// again: one that changed since the leader read it stays).
type TaskPruneArgs struct {
	Roots       []string `msgpack:"r"`
	RetentionMs int64    `msgpack:"k"`
}

// MaxRetentionMs bounds a prune's retention (about 100 years).
const MaxRetentionMs = 100 * 365 * 24 * 3600 * 1000

// ErrCycle answers a task graph whose dependencies form a cycle.
var ErrCycle = errors.New("cycle")

// CancelResult answers task.cancel: how many tasks it ended.
type CancelResult struct {
	Cancelled int `msgpack:"n"`
}

// TaskResult answers an operator's decision with the task as it is after
// it (a follower's admin API answers with it before it applied the
// command itself).
type TaskResult struct {
	Task task.Task `msgpack:"t"`
}

// SubmitResult answers task.submit.
type SubmitResult = task.SubmitResult

// CapSensitiveArgs marks a capability sensitive (its tasks wait for an
// operator's approval), or clears the mark.
type CapSensitiveArgs struct {
	Cap      string `msgpack:"c"`
	Operator string `msgpack:"op"`
	On       bool   `msgpack:"on"`
}

// taskErr turns the errors of packages task and route into the business
// errors replies carry, keeping their messages.
func taskErr(err error) error {
	return asBusiness(err, task.ErrCycle, ErrCycle, task.ErrNotFound, queue.ErrNotFound, task.ErrForbidden, queue.ErrForbidden,
		task.ErrConflict, queue.ErrConflict, task.ErrBadRequest, queue.ErrBadRequest, route.ErrBadRequest, queue.ErrBadRequest)
}

// asBusiness maps err, when it wraps one of the package sentinels given
// in pairs (sentinel, business error), to that business error with the
// message that follows the sentinel's.
func asBusiness(err error, pairs ...error) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if errors.Is(err, pairs[i]) {
			return &detailed{sentinel: pairs[i+1], msg: trimSentinel(err, pairs[i])}
		}
	}
	return err
}

// trimSentinel is an error's message without its sentinel's ("not
// found: no task t9" -> "no task t9"): the reply's code says the rest.
func trimSentinel(err, sentinel error) string {
	msg, s := err.Error(), sentinel.Error()+": "
	if len(msg) > len(s) && msg[:len(s)] == s {
		return msg[len(s):]
	}
	return msg
}

func checkAgentName(field, name string) error {
	if !auth.ValidAgentName(name) {
		return badArg(field, "is not an agent name")
	}
	return nil
}

func init() {
	register(TypeRegister, func(a *route.RegisterArgs) error {
		return firstErr(checkAgentName("agent", a.Agent), checkConn("conn", a.Conn), taskErr(a.Check()))
	}, func(t *Tx, a *route.RegisterArgs) (any, error) {
		if _, err := route.Register(t.Bolt(), t.Now(), *a); err != nil {
			return nil, taskErr(err)
		}
		ag, err := route.Load(t.Bolt(), a.Agent)
		if err != nil {
			return nil, err
		}
		t.Tasks.AgentChanged(ag)
		return nil, t.Tasks.Rehome(ag)
	})
	register(TypeTaskSubmit, func(a *task.SubmitArgs) error {
		return firstErr(checkAgentName("from", a.From), taskErr(a.Check()))
	}, func(t *Tx, a *task.SubmitArgs) (any, error) {
		res, err := t.Tasks.Submit(*a)
		return res, taskErr(err)
	})
	settle := func(a *task.SettleArgs) error {
		if a.Task == "" || a.Attempt < 1 {
			return badArg("task", "names a task and an attempt")
		}
		if len(a.Output) > 0 && !json.Valid(a.Output) {
			return badArg("output", "must be JSON")
		}
		return checkAgentName("agent", a.Agent)
	}
	register(TypeTaskDone, settle, func(t *Tx, a *task.SettleArgs) (any, error) {
		return nil, taskErr(t.Tasks.Done(*a))
	})
	register(TypeTaskFail, settle, func(t *Tx, a *task.SettleArgs) (any, error) {
		return nil, taskErr(t.Tasks.Fail(*a))
	})
	register(TypeTaskCancel, func(a *task.CancelArgs) error {
		if a.Task == "" || (a.Agent == "") == (a.Operator == "") {
			return badArg("task", "names a task and who cancels it")
		}
		return nil
	}, func(t *Tx, a *task.CancelArgs) (any, error) {
		n, err := t.Tasks.Cancel(*a)
		if err != nil {
			return nil, taskErr(err)
		}
		return &CancelResult{Cancelled: n}, nil
	})
	register(TypeTaskDecide, func(a *task.DecideArgs) error {
		if a.Task == "" || a.Operator == "" {
			return badArg("task", "names a task and the operator deciding")
		}
		return nil
	}, func(t *Tx, a *task.DecideArgs) (any, error) {
		if err := t.Tasks.Decide(*a); err != nil {
			return nil, taskErr(err)
		}
		k, err := t.Tasks.Lookup(a.Task)
		if err != nil || k == nil {
			return nil, fmt.Errorf("task %q just decided: %v", a.Task, err)
		}
		return &TaskResult{Task: *k}, nil
	})
	register(TypeCapSensitive, func(a *CapSensitiveArgs) error {
		if !route.ValidCapName(a.Cap) || a.Operator == "" {
			return badArg("capability", "names a capability and the operator")
		}
		return nil
	}, func(t *Tx, a *CapSensitiveArgs) (any, error) {
		return nil, taskErr(t.Tasks.SetSensitive(a.Cap, a.Operator, a.On))
	})
	register(TypeTaskPrune, func(a *TaskPruneArgs) error {
		return firstErr(
			checkRange("roots", int64(len(a.Roots)), 1, task.MaxPruneRoots),
			checkRange("retention_ms", a.RetentionMs, 0, MaxRetentionMs),
		)
	}, func(t *Tx, a *TaskPruneArgs) (any, error) {
		r, err := t.Tasks.Prune(a.Roots, t.Now()-a.RetentionMs)
		if err != nil {
			return nil, taskErr(err)
		}
		return &r, nil
	})
}

// endRegistrations ends the registrations of the connections that match
// (closed, or of a node that went down or restarted): an agent whose
// last one ends goes offline, and its tasks' leases run out on their
// own; an agent still online gets the tasks pushed to that connection
// again on another.
func (t *Tx) endRegistrations(match func(conn string) bool) error {
	for _, c := range route.Conns(t.Bolt(), match) {
		a, err := route.ConnClosed(t.Bolt(), t.Now(), c)
		if err != nil {
			return err
		}
		if a != nil && a.Online() {
			// Its tasks pushed to that connection go to another one.
			if err := t.Tasks.Rehome(a); err != nil {
				return err
			}
		}
	}
	return nil
}

// finish ends a command: queues hand out deliveries, tasks are routed,
// and the task effects join the queue effects, in that order.
func (t *Tx) finish() error {
	if err := t.Finish(); err != nil {
		return err
	}
	if err := t.Tasks.Finish(); err != nil {
		return err
	}
	for _, e := range t.Tasks.Effects {
		t.Effects = append(t.Effects, e)
	}
	t.Tasks.Effects = t.Tasks.Effects[:0]
	return nil
}
