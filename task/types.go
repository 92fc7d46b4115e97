// Package task owns the delegation graph as plain functions over a bbolt
// transaction: task graphs submitted atomically, their states and
// dependencies, assignment to agents through package route, attempts with
// leases and retries with backoff, results handed to dependents, failures
// cascading, cancellation of subtrees, operator approval holds, and the
// provenance of every task (its origin, intent, delegation chain and the
// signed envelope of every hop).
//
// Nothing here reads a clock, draws a random number or lets Go map order
// reach the state: every function runs at the leader-stamped time of its
// command, so every replica computes the same graph and the same
// assignments. The package imports neither raft nor net.
package task

import (
	"encoding/json"
	"errors"
)

// Task states (PROTOCOL.md).
const (
	StateWaiting   = "waiting"   // dependencies not all succeeded
	StateHeld      = "held"      // waiting for an operator's approval
	StateReady     = "ready"     // waiting for an agent (or for its retry time)
	StateAssigned  = "assigned"  // leased to an agent
	StateSucceeded = "succeeded" // done, its output stored
	StateFailed    = "failed"    // failed for good
	StateCancelled = "cancelled" // cancelled, or a dependency failed
)

// Final reports whether a state is an end state.
func Final(state string) bool {
	return state == StateSucceeded || state == StateFailed || state == StateCancelled
}

// Sentinel errors; the transport maps them to protocol codes.
var (
	ErrBadRequest = errors.New("bad request")
	ErrNotFound   = errors.New("not found")
	ErrForbidden  = errors.New("forbidden")
	ErrCycle      = errors.New("cycle")
	ErrConflict   = errors.New("conflict")
)

// Defaults and bounds of a task's settings: constants of the replicated
// state machine.
const (
	DefaultMaxAttempts = 3
	MaxMaxAttempts     = 100
	DefaultTimeoutMs   = 600_000
	MinTimeoutMs       = 100
	MaxTimeoutMs       = 24 * 3600 * 1000
	MaxTasksPerSubmit  = 1000
	MaxDeps            = 1000
	MaxRefLen          = 64
	MaxIntentLen       = 4096
	MaxErrorLen        = 4096
	MaxReasonLen       = 1024
)

// DefaultBackoffMs is the wait before each retry of a task that fails.
var DefaultBackoffMs = []int64{1000, 5000, 30000}

// Limits are the delegation budget a node applies (its flags), carried in
// each submit so that every replica enforces the same values.
type Limits struct {
	MaxDepth    int   `msgpack:"d"` // agents in a chain
	MaxFanout   int   `msgpack:"f"` // sub-tasks under one task, over all its submits
	AllowRepeat bool  `msgpack:"r"` // an agent may appear twice in a chain
	MaxOutput   int64 `msgpack:"o"` // bytes of a task's output
}

// DefaultLimits are the budget of a node started without flags.
var DefaultLimits = Limits{MaxDepth: 8, MaxFanout: 1000, MaxOutput: 256 << 10}

// Hop is one step of a delegation chain: the agent that submitted the
// task at that step, the task it submitted, and the envelope it signed.
type Hop struct {
	Agent string          `msgpack:"a" json:"agent"`
	Task  string          `msgpack:"t" json:"task"`
	Env   json.RawMessage `msgpack:"e" json:"envelope"`
}

// Event is one line of a task's history.
type Event struct {
	At      int64  `msgpack:"t" json:"at"`
	Event   string `msgpack:"e" json:"event"`
	Agent   string `msgpack:"a,omitempty" json:"agent,omitempty"`
	Attempt int    `msgpack:"n,omitempty" json:"attempt,omitempty"`
	Detail  string `msgpack:"d,omitempty" json:"detail,omitempty"`
}

// Task is a stored task.
type Task struct {
	ID         string          `msgpack:"id" json:"id"`
	Ref        string          `msgpack:"rf" json:"ref"`
	Graph      string          `msgpack:"g" json:"graph"`
	Capability string          `msgpack:"c" json:"capability"`
	Input      json.RawMessage `msgpack:"in" json:"input"`
	Deps       []string        `msgpack:"dp,omitempty" json:"deps,omitempty"`
	DepRefs    []string        `msgpack:"dr,omitempty" json:"-"`
	Parent     string          `msgpack:"p,omitempty" json:"parent,omitempty"`
	// Lineage lists the graphs and tasks this task descends from, oldest
	// first, its own graph last: watching or cancelling any of them
	// reaches it.
	Lineage []string `msgpack:"ln" json:"lineage"`
	Origin  string   `msgpack:"o" json:"origin"`
	Intent  string   `msgpack:"it,omitempty" json:"intent,omitempty"`
	Chain   []string `msgpack:"ch" json:"chain"`
	Hops    []Hop    `msgpack:"hp" json:"hops"`

	MaxAttempts int     `msgpack:"ma" json:"max_attempts"`
	TimeoutMs   int64   `msgpack:"to" json:"timeout_ms"`
	BackoffMs   []int64 `msgpack:"bo,omitempty" json:"backoff_ms,omitempty"`
	Approval    bool    `msgpack:"ap,omitempty" json:"approval,omitempty"`

	State      string `msgpack:"s" json:"state"`
	Pending    int    `msgpack:"pd,omitempty" json:"-"` // dependencies not yet succeeded
	Attempt    int    `msgpack:"at,omitempty" json:"attempt,omitempty"`
	Agent      string `msgpack:"ag,omitempty" json:"agent,omitempty"`
	Conn       string `msgpack:"cn,omitempty" json:"-"`
	LeaseUntil int64  `msgpack:"lu,omitempty" json:"lease_until,omitempty"`
	NotBefore  int64  `msgpack:"nb,omitempty" json:"not_before,omitempty"` // a retry's time
	Fanout     int    `msgpack:"fo,omitempty" json:"-"`                    // sub-tasks submitted under it

	Output json.RawMessage `msgpack:"out,omitempty" json:"output,omitempty"`
	Error  string          `msgpack:"err,omitempty" json:"error,omitempty"`

	Created int64   `msgpack:"cr" json:"created"`
	Updated int64   `msgpack:"up" json:"updated"`
	History []Event `msgpack:"h" json:"history"`
}

func (t *Task) log(now int64, event, agent string, attempt int, detail string) {
	t.History = append(t.History, Event{At: now, Event: event, Agent: agent, Attempt: attempt, Detail: detail})
	t.Updated = now
}

// Submitter is the agent that submitted the task (the last of its chain).
func (t *Task) Submitter() string { return t.Chain[len(t.Chain)-1] }

// Involves reports whether an agent took part in the task: it is in its
// chain or was assigned it.
func (t *Task) Involves(agent string) bool {
	for _, a := range t.Chain {
		if a == agent {
			return true
		}
	}
	for _, e := range t.History {
		if e.Event == "assigned" && e.Agent == agent {
			return true
		}
	}
	return false
}

// Push is a task handed to an agent's connection (the "task" push).
type Push struct {
	Conn       string
	Task       *Task
	DepsOutput map[string]json.RawMessage
}

// Target implements the effect interface of package queue.
func (p *Push) Target() string { return p.Conn }

// Revoked tells the connection of an agent that held a task that the
// task was taken back (cancelled, or its lease lapsed and it went on).
type Revoked struct {
	Conn    string
	Task    string
	Attempt int
	Reason  string
}

// Target implements the effect interface of package queue.
func (r *Revoked) Target() string { return r.Conn }

// Updated is the effect of a task's change on every node, for the
// connections watching it or one of its lineage there.
type Updated struct {
	Task *Task
}

// Target implements the effect interface of package queue: no
// connection, every node.
func (*Updated) Target() string { return "" }
