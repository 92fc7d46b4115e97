package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
)

// Delegation (docs/delegation-cli.md, docs/protocol.md): an agent
// registers the capabilities it offers, the cluster pushes it the tasks
// of those capabilities, and any agent submits graphs of tasks, reads
// them, watches them and cancels them.

// Capability is one capability an agent offers: tasks of it are pushed to
// the agent while it is online, at most MaxInflight at a time (0 means 1).
// Agents reports Inflight, the tasks the agent holds now.
type Capability struct {
	Name        string `json:"name"`
	MaxInflight int    `json:"max_inflight,omitempty"`
	Inflight    int    `json:"inflight"`
}

// AgentInfo is an agent's presence and load as the agents op reports it.
type AgentInfo struct {
	Name         string          `json:"name"`
	Online       bool            `json:"online"`
	Nodes        []string        `json:"nodes"` // the nodes of its open registered connections
	Capabilities []Capability    `json:"capabilities"`
	Meta         json.RawMessage `json:"meta,omitempty"`
	Since        int64           `json:"since"`                   // unix ms it last came online
	OfflineSince int64           `json:"offline_since,omitempty"` // unix ms it last went offline
	LastActive   int64           `json:"last_active"`             // unix ms it last got or finished a task
	Succeeded    int64           `json:"succeeded"`
	Failed       int64           `json:"failed"`
	// RecentSucceeded and RecentFailed count the outcomes among its last
	// few dozen tasks.
	RecentSucceeded int `json:"recent_succeeded"`
	RecentFailed    int `json:"recent_failed"`
}

// Task states (docs/protocol.md).
const (
	TaskWaiting   = "waiting"
	TaskHeld      = "held"
	TaskReady     = "ready"
	TaskAssigned  = "assigned"
	TaskSucceeded = "succeeded"
	TaskFailed    = "failed"
	TaskCancelled = "cancelled"
)

// TaskFinal reports whether a task state is an end state.
func TaskFinal(state string) bool {
	return state == TaskSucceeded || state == TaskFailed || state == TaskCancelled
}

// TaskEvent is one line of a task's history.
type TaskEvent struct {
	At      int64  `json:"at"` // unix ms
	Event   string `json:"event"`
	Agent   string `json:"agent,omitempty"`
	Attempt int    `json:"attempt,omitempty"`
	Detail  string `json:"detail,omitempty"`
}

// TaskHop is one step of a task's delegation chain: the agent that
// submitted the task at that step, that task, and the envelope it signed.
type TaskHop struct {
	Agent    string          `json:"agent"`
	Task     string          `json:"task"`
	Envelope json.RawMessage `json:"envelope"`
}

// Task is a task as task.get reports it. A task.update push fills the
// fields it carries: the ids, capability, state, origin, chain, agent,
// attempt, output, error and Updated.
type Task struct {
	ID          string          `json:"id"`
	Ref         string          `json:"ref"`
	Graph       string          `json:"graph"`
	Capability  string          `json:"capability"`
	Input       json.RawMessage `json:"input,omitempty"`
	Deps        []string        `json:"deps,omitempty"`
	Parent      string          `json:"parent,omitempty"`
	Lineage     []string        `json:"lineage,omitempty"`
	Origin      string          `json:"origin"`
	Intent      string          `json:"intent,omitempty"`
	Chain       []string        `json:"chain"`
	Hops        []TaskHop       `json:"hops,omitempty"`
	MaxAttempts int             `json:"max_attempts,omitempty"`
	TimeoutMs   int64           `json:"timeout_ms,omitempty"`
	BackoffMs   []int64         `json:"backoff_ms,omitempty"`
	Approval    bool            `json:"approval,omitempty"`
	State       string          `json:"state"`
	Attempt     int             `json:"attempt,omitempty"`
	Agent       string          `json:"agent,omitempty"`
	LeaseUntil  int64           `json:"lease_until,omitempty"`
	NotBefore   int64           `json:"not_before,omitempty"`
	Output      json.RawMessage `json:"output,omitempty"`
	Error       string          `json:"error,omitempty"`
	Created     int64           `json:"created,omitempty"`
	Updated     int64           `json:"updated"`
	History     []TaskEvent     `json:"history,omitempty"`
}

// TaskSpec is one task of a submitted graph.
type TaskSpec struct {
	Ref        string // names the task within its graph (deps use it)
	Capability string
	// Input is the body of the task's input envelope, which the client
	// builds and signs (a json.RawMessage is used as is). InputEnvelope,
	// if set, is a ready-made envelope (NewEnvelope) sent byte for byte
	// instead.
	Input         any
	InputEnvelope json.RawMessage
	Deps          []string // refs of tasks of the same submission
	MaxAttempts   int      // 0: the server's default (3)
	TimeoutMs     int64    // each attempt's lease; 0: the server's default (10 min)
	Approval      bool     // held until an operator approves it
}

// SubmitRequest is a task.submit: a graph of tasks, with the purpose
// they serve, maybe under a task this agent works on (Parent).
type SubmitRequest struct {
	Parent string
	Intent string
	Tasks  []TaskSpec
}

// SubmitTasks submits a graph of tasks atomically and returns the id of
// each task by its ref, and the graph's id (root). Each input is wrapped
// in an envelope from this agent, signed by the client's signer, with
// the request's intent.
//
// A submission is not deduplicated by the server, so it is sent again
// only after errors that guarantee nothing was stored (unavailable
// without "unknown", rate_limited). After a lost reply the error wraps
// ErrDisconnected: the graph may or may not exist.
func (c *Client) SubmitTasks(ctx context.Context, req SubmitRequest) (ids map[string]string, root string, err error) {
	f := newFrame("task.submit")
	if req.Parent != "" {
		f.str("parent", req.Parent)
	}
	if req.Intent != "" {
		f.str("intent", req.Intent)
	}
	list := []byte{'['}
	for i, s := range req.Tasks {
		env := s.InputEnvelope
		if env == nil {
			if env, err = c.newEnvelope(s.Input, msgOptions{intent: req.Intent}); err != nil {
				return nil, "", fmt.Errorf("task.submit: tasks[%d]: %w", i, err)
			}
		} else if !json.Valid(env) {
			return nil, "", fmt.Errorf("task.submit: tasks[%d]: the input envelope is not valid JSON", i)
		}
		o := object{}
		o.str("ref", s.Ref).str("capability", s.Capability).raw("input", env)
		if len(s.Deps) > 0 {
			deps, _ := marshalNoEscape(s.Deps)
			o.raw("deps", deps)
		}
		if s.MaxAttempts > 0 {
			o.int("max_attempts", int64(s.MaxAttempts))
		}
		if s.TimeoutMs > 0 {
			o.int("timeout_ms", s.TimeoutMs)
		}
		if s.Approval {
			o.raw("approval", []byte("true"))
		}
		if i > 0 {
			list = append(list, ',')
		}
		list = append(list, o.done()...)
	}
	f.raw("tasks", append(list, ']'))
	r, err := c.requestUnchanged(ctx, f)
	if err != nil {
		return nil, "", fmt.Errorf("task.submit: %w", err)
	}
	var res struct {
		IDs  map[string]string `json:"ids"`
		Root string            `json:"root"`
	}
	if err := json.Unmarshal(r.raw, &res); err != nil {
		return nil, "", fmt.Errorf("task.submit: decoding reply: %w", err)
	}
	return res.IDs, res.Root, nil
}

// requestUnchanged is request for ops that must not run twice: it
// retries only errors after which the server changed nothing.
func (c *Client) requestUnchanged(ctx context.Context, f *frame) (*inFrame, error) {
	var b backoff
	b.min, b.max = c.opts.MinBackoff/2, c.opts.MaxBackoff
	for {
		cn, err := c.conn(ctx)
		if err != nil {
			return nil, err
		}
		r, err := cn.do(ctx, f, nil, nil)
		var e *Error
		if err == nil || !errors.As(err, &e) || e.Unknown || (e.Code != "unavailable" && e.Code != "rate_limited") {
			return r, err
		}
		if !sleepCtx(ctx, c.ctx.Done(), b.next()) {
			if c.ctx.Err() != nil {
				return nil, ErrClosed
			}
			return nil, withLast(ctx.Err(), err)
		}
	}
}

// object builds one JSON object field by field, raw values byte for byte.
type object struct{ buf []byte }

func (o *object) key(k string) {
	if len(o.buf) == 0 {
		o.buf = append(o.buf, '{')
	} else {
		o.buf = append(o.buf, ',')
	}
	o.buf = appendJSONString(o.buf, k)
	o.buf = append(o.buf, ':')
}

func (o *object) str(k, v string) *object {
	o.key(k)
	o.buf = appendJSONString(o.buf, v)
	return o
}

func (o *object) int(k string, v int64) *object {
	o.key(k)
	o.buf = strconv.AppendInt(o.buf, v, 10)
	return o
}

func (o *object) raw(k string, v []byte) *object {
	o.key(k)
	o.buf = append(o.buf, v...)
	return o
}

func (o *object) done() []byte {
	if len(o.buf) == 0 {
		return []byte("{}")
	}
	return append(o.buf, '}')
}

// Agents lists every agent that ever registered: online or not, its
// capabilities with their load, and its recent outcomes.
func (c *Client) Agents(ctx context.Context) ([]AgentInfo, error) {
	r, err := c.request(ctx, newFrame("agents"), true)
	if err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	var res struct {
		Agents []AgentInfo `json:"agents"`
	}
	if err := json.Unmarshal(r.raw, &res); err != nil {
		return nil, fmt.Errorf("agents: decoding reply: %w", err)
	}
	return res.Agents, nil
}

// TaskGet is what task.get answers: one task, or every task of a graph
// when the id named a graph (the root a submit returned).
type TaskGet struct {
	Task  *Task   // the task, when the id named one
	Graph string  // the graph's id, when the id named a graph
	Tasks []*Task // the graph's tasks, in id order
}

// GetTask reads a task, with its history and provenance, or every task
// of a graph.
func (c *Client) GetTask(ctx context.Context, id string) (*TaskGet, error) {
	r, err := c.request(ctx, newFrame("task.get").str("task", id), true)
	if err != nil {
		return nil, fmt.Errorf("task.get %s: %w", id, err)
	}
	return decodeTaskGet(id, r.raw)
}

func decodeTaskGet(id string, raw []byte) (*TaskGet, error) {
	var res struct {
		Task  *Task   `json:"task"`
		Graph string  `json:"graph"`
		Tasks []*Task `json:"tasks"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("task.get %s: decoding reply: %w", id, err)
	}
	if res.Task == nil && res.Graph == "" {
		return nil, fmt.Errorf("task.get %s: the reply holds neither a task nor a graph", id)
	}
	return &TaskGet{Task: res.Task, Graph: res.Graph, Tasks: res.Tasks}, nil
}

// CancelTask cancels a task, or every task of a graph, with everything
// delegated under them and what depends on them, and returns how many
// tasks it ended. Only the task's origin or its submitter may.
func (c *Client) CancelTask(ctx context.Context, id, reason string) (int, error) {
	f := newFrame("task.cancel").str("task", id)
	if reason != "" {
		f.str("reason", reason)
	}
	r, err := c.request(ctx, f, true)
	if err != nil {
		return 0, fmt.Errorf("task.cancel %s: %w", id, err)
	}
	var res struct {
		Cancelled int `json:"cancelled"`
	}
	if err := json.Unmarshal(r.raw, &res); err != nil {
		return 0, fmt.Errorf("task.cancel %s: decoding reply: %w", id, err)
	}
	return res.Cancelled, nil
}

// TaskDone reports the output of an attempt of a task this agent holds.
// output is marshalled to JSON (a json.RawMessage is sent as is). It is
// retried across reconnects; when a retry finds the attempt already
// settled by this agent with this outcome, it succeeds.
func (c *Client) TaskDone(ctx context.Context, id string, attempt int, output any) error {
	var out []byte
	switch v := output.(type) {
	case json.RawMessage:
		if !json.Valid(v) {
			return fmt.Errorf("task.done %s: the output is not valid JSON", id)
		}
		out = v
	default:
		var err error
		if out, err = marshalNoEscape(v); err != nil {
			return fmt.Errorf("task.done %s: encoding the output: %w", id, err)
		}
	}
	f := newFrame("task.done").str("task", id).int("attempt", int64(attempt)).raw("output", out)
	return c.settleTask(ctx, f, id, attempt, "succeeded")
}

// TaskFail reports that an attempt of a task this agent holds failed.
// With retry the task is tried again after its backoff while attempts
// remain; without, it fails for good (its dependents are cancelled).
func (c *Client) TaskFail(ctx context.Context, id string, attempt int, errMsg string, retry bool) error {
	f := newFrame("task.fail").str("task", id).int("attempt", int64(attempt)).str("error", truncate(errMsg, maxTaskError))
	if retry {
		f.raw("retry", []byte("true"))
	}
	return c.settleTask(ctx, f, id, attempt, "failed")
}

// maxTaskError is the longest error text the server takes.
const maxTaskError = 4096

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && s[i]&0xC0 == 0x80 {
		i--
	}
	return s[:i]
}

// settleTask sends task.done or task.fail. A not_found after a retry may
// answer a first try whose reply was lost: the task's history tells.
func (c *Client) settleTask(ctx context.Context, f *frame, id string, attempt int, event string) error {
	defer c.forgetTask(id, attempt)
	_, err := c.request(ctx, f, true)
	if err != nil && IsCode(err, "not_found") {
		if g, gerr := c.GetTask(ctx, id); gerr == nil && g.Task != nil {
			for _, e := range g.Task.History {
				if e.Event == event && e.Agent == c.opts.Agent && e.Attempt == attempt {
					return nil
				}
			}
		}
	}
	if err != nil {
		return fmt.Errorf("%s %s attempt %d: %w", f.op, id, attempt, err)
	}
	return nil
}

// ---- Registration and assigned tasks ----

// taskState is the client's side of delegation: the registration sent
// again on every connection, the tasks pushed to it, and the attempts it
// holds (by task and attempt) so that task.revoked reaches them.
type taskState struct {
	regMu sync.Mutex // serialises register requests, so the latest wins

	// Guarded by Client.mu.
	reg  *frame // the register request; nil when not registered
	box  *mailbox[*TaskAssignment]
	held map[taskKey]*TaskAssignment
}

type taskKey struct {
	id      string
	attempt int
}

// Register offers capabilities: the cluster pushes tasks of them to this
// client (see Tasks, or Work, which registers itself), at most
// MaxInflight of each at a time. meta (an object, or nil) is shown by
// Agents. The latest registration of the agent wins. A registration
// lasts as long as its connection: the client registers again on every
// new connection until Unregister or Close.
func (c *Client) Register(ctx context.Context, caps []Capability, meta any) error {
	f, err := registerFrame(caps, meta)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	prev := c.tk.reg
	c.tk.reg = f
	c.taskBoxLocked()
	c.mu.Unlock()
	if err := c.syncRegistration(ctx, nil); err != nil {
		c.mu.Lock()
		if c.tk.reg == f {
			c.tk.reg = prev
		}
		c.mu.Unlock()
		return fmt.Errorf("register: %w", err)
	}
	return nil
}

// Unregister withdraws every capability: no more tasks are pushed to
// this agent through this client. Tasks it holds stay its own until it
// settles them or their leases run out.
func (c *Client) Unregister(ctx context.Context) error {
	c.mu.Lock()
	c.tk.reg = nil
	cn := c.cur
	c.mu.Unlock()
	if cn == nil {
		return nil // registrations end with their connection
	}
	c.tk.regMu.Lock()
	defer c.tk.regMu.Unlock()
	var b backoff
	b.min, b.max = c.opts.MinBackoff/2, c.opts.MaxBackoff
	for {
		_, err := cn.do(ctx, newFrame("register").raw("capabilities", []byte("[]")), nil, nil)
		switch {
		case err == nil || errors.Is(err, ErrDisconnected):
			return nil
		case c.ctx.Err() != nil:
			return ErrClosed
		case ctx.Err() != nil || !retryable(err):
			return fmt.Errorf("register: %w", err)
		}
		if !sleepCtx(ctx, cn.done, b.next()) && ctx.Err() != nil {
			return fmt.Errorf("register: %w", ctx.Err())
		}
	}
}

func registerFrame(caps []Capability, meta any) (*frame, error) {
	list := []byte{'['}
	for i, cp := range caps {
		o := object{}
		o.str("name", cp.Name)
		if cp.MaxInflight > 0 {
			o.int("max_inflight", int64(cp.MaxInflight))
		}
		if i > 0 {
			list = append(list, ',')
		}
		list = append(list, o.done()...)
	}
	f := newFrame("register").raw("capabilities", append(list, ']'))
	if meta != nil {
		b, err := marshalNoEscape(meta)
		if err != nil {
			return nil, fmt.Errorf("register: encoding meta: %w", err)
		}
		if string(b) != "null" {
			f.raw("meta", b)
		}
	}
	return f, nil
}

// syncRegistration sends the current registration: on only while it
// lives, or (only nil) on the current connection, retrying across
// reconnects until ctx ends. Sends are serialised, each of the latest
// registration, so the last one the server applies is the latest.
func (c *Client) syncRegistration(ctx context.Context, only *conn) error {
	c.tk.regMu.Lock()
	defer c.tk.regMu.Unlock()
	var b backoff
	b.min, b.max = c.opts.MinBackoff/2, c.opts.MaxBackoff
	for {
		c.mu.Lock()
		f := c.tk.reg
		c.mu.Unlock()
		if f == nil {
			return nil // unregistered meanwhile
		}
		cn := only
		if cn == nil {
			var err error
			if cn, err = c.conn(ctx); err != nil {
				return err
			}
		}
		_, err := cn.do(ctx, f, nil, nil)
		switch {
		case err == nil:
			return nil
		case c.ctx.Err() != nil:
			return ErrClosed
		case only != nil && errors.Is(err, ErrDisconnected):
			return nil // the next connection registers again
		case ctx.Err() != nil || !retryable(err):
			return err
		}
		var stop <-chan struct{}
		if only != nil {
			stop = only.done
		}
		if !sleepCtx(ctx, stop, b.next()) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return nil
		}
	}
}

// reregisterLocked sends the registration again on a new connection, in
// the background. c.mu must be held.
func (c *Client) reregisterLocked(cn *conn) {
	if c.tk.reg == nil || c.closed {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := c.syncRegistration(c.ctx, cn); err != nil && c.ctx.Err() == nil {
			c.log.Error("cannot register again after reconnecting", "err", err)
		}
	}()
}

// taskBoxLocked returns the mailbox of pushed tasks, made and pumped on
// first use. c.mu must be held.
func (c *Client) taskBoxLocked() *mailbox[*TaskAssignment] {
	if c.tk.box == nil {
		c.tk.box = newMailbox[*TaskAssignment](0)
		c.tk.held = map[taskKey]*TaskAssignment{}
		c.wg.Add(1)
		go func(m *mailbox[*TaskAssignment]) {
			defer c.wg.Done()
			m.pump()
		}(c.tk.box)
	}
	return c.tk.box
}

// Tasks returns the channel of the tasks the cluster pushes to this
// client once it registered (Register). Each must be settled with Done or
// Fail; its Context ends when the cluster takes it back. The channel
// closes when the client closes. Work reads it for you; use one or the
// other.
func (c *Client) Tasks() <-chan *TaskAssignment {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed && c.tk.box == nil {
		ch := make(chan *TaskAssignment)
		close(ch)
		return ch
	}
	return c.taskBoxLocked().ch
}

func (c *Client) closeTasks() {
	c.mu.Lock()
	box, held := c.tk.box, c.tk.held
	c.tk.held = nil
	c.mu.Unlock()
	if box != nil {
		box.halt(ErrClosed)
	}
	for _, a := range held {
		a.cancel(ErrClosed)
	}
}

func (c *Client) forgetTask(id string, attempt int) {
	c.mu.Lock()
	a := c.tk.held[taskKey{id, attempt}]
	delete(c.tk.held, taskKey{id, attempt})
	c.mu.Unlock()
	if a != nil {
		a.cancel(errSettled)
	}
}

var errSettled = errors.New("mcpd client: the task attempt was settled")

// RevokedError is the cause (context.Cause) of a task's Context when the
// cluster took the task back: it was cancelled, or its lease ran out.
type RevokedError struct {
	Task    string
	Attempt int
	Reason  string
}

func (e *RevokedError) Error() string {
	return fmt.Sprintf("task %s attempt %d was taken back: %s", e.Task, e.Attempt, e.Reason)
}

// taskPush handles the task and task.revoked pushes (reader goroutine).
// Without a registration through this client they are left to OnPush.
func (c *Client) taskPush(cn *conn, f *inFrame) {
	if f.Op == "task.revoked" {
		var p struct {
			Task    string `json:"task"`
			Attempt int    `json:"attempt"`
			Reason  string `json:"reason"`
		}
		if json.Unmarshal(f.raw, &p) != nil {
			return
		}
		c.mu.Lock()
		a := c.tk.held[taskKey{p.Task, p.Attempt}]
		delete(c.tk.held, taskKey{p.Task, p.Attempt})
		box := c.tk.box
		c.mu.Unlock()
		if a != nil {
			a.cancel(&RevokedError{Task: p.Task, Attempt: p.Attempt, Reason: p.Reason})
			box.filter(func(x *TaskAssignment) bool { return x != a })
		}
		return
	}
	var p struct {
		Task struct {
			ID         string                     `json:"id"`
			Ref        string                     `json:"ref"`
			Graph      string                     `json:"graph"`
			Parent     string                     `json:"parent"`
			Capability string                     `json:"capability"`
			Input      json.RawMessage            `json:"input"`
			Intent     string                     `json:"intent"`
			Origin     string                     `json:"origin"`
			Chain      []string                   `json:"chain"`
			DepsOutput map[string]json.RawMessage `json:"deps_output"`
		} `json:"task"`
		Attempt    int   `json:"attempt"`
		LeaseUntil int64 `json:"lease_until"`
	}
	if err := json.Unmarshal(f.raw, &p); err != nil || p.Task.ID == "" {
		cn.log.Warn("ignoring a malformed task push", "err", err)
		return
	}
	t := p.Task
	a := &TaskAssignment{
		ID: t.ID, Ref: t.Ref, Graph: t.Graph, Parent: t.Parent, Capability: t.Capability, Input: t.Input,
		Intent: t.Intent, Origin: t.Origin, Chain: t.Chain, DepsOutput: t.DepsOutput,
		Attempt: p.Attempt, LeaseUntil: p.LeaseUntil, c: c,
	}
	a.ctx, a.cancel = context.WithCancelCause(context.Background())
	c.mu.Lock()
	box, registered := c.tk.box, c.tk.reg != nil
	if c.closed {
		box = nil
	} else if box != nil && registered {
		if c.tk.held[taskKey{a.ID, a.Attempt}] != nil {
			c.mu.Unlock()
			return // pushed again (after a reconnect, say): it is being worked on
		}
		c.tk.held[taskKey{a.ID, a.Attempt}] = a
	}
	c.mu.Unlock()
	switch {
	case box == nil:
		// Registered by other means (Do): OnPush has it.
	case !registered:
		// Unregistered since: hand it back at once for another agent.
		a.cancel(errSettled)
		cn.post(newFrame("task.fail").str("task", a.ID).int("attempt", int64(a.Attempt)).
			str("error", "the agent withdrew its capabilities").raw("retry", []byte("true")))
	default:
		box.put(a)
	}
}

// TaskAssignment is one attempt of a task pushed to this agent. Settle it
// with exactly one of Done or Fail.
type TaskAssignment struct {
	ID         string
	Ref        string
	Graph      string
	Parent     string // the task it was delegated under, if any
	Capability string
	Input      json.RawMessage // the envelope its submitter signed, byte for byte
	Intent     string          // the originator's purpose
	Origin     string          // the agent the delegation started from
	Chain      []string        // the agents that delegated it, origin first
	// DepsOutput holds the output of each dependency, by its ref.
	DepsOutput map[string]json.RawMessage
	Attempt    int
	LeaseUntil int64 // unix ms (server clock): the attempt fails if not settled by then

	c      *Client
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// Context ends when the cluster takes the task back (a cancel, or its
// lease ran out: context.Cause is a *RevokedError), when it was settled,
// or when the client closes.
func (a *TaskAssignment) Context() context.Context { return a.ctx }

// Envelope decodes the input envelope.
func (a *TaskAssignment) Envelope() (*Envelope, error) { return ParseEnvelope(a.Input) }

// Body is the input envelope's body (nil if the envelope cannot be read).
func (a *TaskAssignment) Body() json.RawMessage {
	e, err := ParseEnvelope(a.Input)
	if err != nil {
		return nil
	}
	return e.Body
}

// Done reports the task's output (see Client.TaskDone).
func (a *TaskAssignment) Done(ctx context.Context, output any) error {
	return a.c.TaskDone(ctx, a.ID, a.Attempt, output)
}

// Fail reports the attempt failed (see Client.TaskFail).
func (a *TaskAssignment) Fail(ctx context.Context, errMsg string, retry bool) error {
	return a.c.TaskFail(ctx, a.ID, a.Attempt, errMsg, retry)
}

// Delegate submits a graph of sub-tasks under this task: they inherit
// its origin and intent, and extend its chain with this agent. The
// request's Parent is set to this task.
func (a *TaskAssignment) Delegate(ctx context.Context, req SubmitRequest) (ids map[string]string, root string, err error) {
	req.Parent = a.ID
	if req.Intent == "" {
		req.Intent = a.Intent
	}
	return a.c.SubmitTasks(ctx, req)
}

// ---- Watches ----

// TaskUpdate is a change of a watched task, or (Snapshot) its state when
// the watch was opened or re-opened after a reconnect.
type TaskUpdate struct {
	Task     *Task
	Snapshot bool
}

// TaskWatch follows a task and everything delegated under it, or every
// task of a graph and everything delegated under them. It survives
// reconnects: the client watches again on every new connection and reads
// the current state then, so that no end state is missed.
type TaskWatch struct {
	ID string // the task or graph watched

	st  stream
	box *mailbox[*TaskUpdate]

	mu   sync.Mutex
	seen map[string]int64 // task id -> Updated of the newest state handed over
}

// WatchTasks watches a task or a graph: C delivers first the current
// state of the task (or of every task of the graph, one update each),
// then every change of it and of the tasks delegated under it, until
// Stop or Close. To know when a whole graph has ended, read its tasks
// with GetTask after WatchTasks returns and wait for each of them (and
// for the sub-tasks that appear).
func (c *Client) WatchTasks(ctx context.Context, id string) (*TaskWatch, error) {
	w := &TaskWatch{ID: id, box: newMailbox[*TaskUpdate](0), seen: map[string]int64{}}
	w.st = stream{c: c, kind: kindWatch, open: newFrame("task.watch").str("task", id),
		closeOp: "task.unwatch", idField: "watch", sink: w}
	if err := startPump(c, w.box); err != nil {
		return nil, err
	}
	if err := c.openStream(ctx, &w.st); err != nil {
		w.box.halt(err)
		return nil, fmt.Errorf("task.watch %s: %w", id, err)
	}
	return w, nil
}

// C returns the channel of updates; it closes on Stop, when the watch
// cannot be re-opened (see Err), or when the client closes.
func (w *TaskWatch) C() <-chan *TaskUpdate { return w.box.ch }

// Next waits for the next update.
func (w *TaskWatch) Next(ctx context.Context) (*TaskUpdate, error) { return w.box.next(ctx) }

// Err returns why the watch ended, or nil.
func (w *TaskWatch) Err() error { return w.box.reason() }

// Stop ends the watch; C closes after the updates already received.
func (w *TaskWatch) Stop(ctx context.Context) error { return w.st.c.closeStream(ctx, &w.st) }

func (w *TaskWatch) push(_ *conn, f *inFrame) {
	var p struct {
		Task *Task `json:"task"`
	}
	if json.Unmarshal(f.raw, &p) != nil || p.Task == nil {
		return
	}
	w.mu.Lock()
	if p.Task.Updated < w.seen[p.Task.ID] {
		w.mu.Unlock()
		return // older than a snapshot already handed over
	}
	w.seen[p.Task.ID] = p.Task.Updated
	w.box.put(&TaskUpdate{Task: p.Task})
	w.mu.Unlock()
}

// opened reads the current state on the connection the watch just opened
// on: what changed before it (or while the client was reconnecting) was
// not pushed.
func (w *TaskWatch) opened(cn *conn) {
	c := w.st.c
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		r, err := cn.do(c.ctx, newFrame("task.get").str("task", w.ID), nil, nil)
		if err != nil {
			if !errors.Is(err, ErrDisconnected) && c.ctx.Err() == nil {
				c.log.Warn("cannot read the state of a watched task", "task", w.ID, "err", err)
			}
			return
		}
		g, err := decodeTaskGet(w.ID, r.raw)
		if err != nil {
			return
		}
		tasks := g.Tasks
		if g.Task != nil {
			tasks = []*Task{g.Task}
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, t := range tasks {
			if seen, ok := w.seen[t.ID]; ok && t.Updated <= seen {
				continue
			}
			w.seen[t.ID] = t.Updated
			w.box.put(&TaskUpdate{Task: t, Snapshot: true})
		}
	}()
}

func (w *TaskWatch) dropFrom(*conn) {} // updates hold no lease
func (w *TaskWatch) end(err error)  { w.box.end(err) }
func (w *TaskWatch) halt(err error) { w.box.halt(err) }
