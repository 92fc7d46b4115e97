package transport

import (
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"sync"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/route"
	"github.com/mcpd/mcpd/task"
	bolt "go.etcd.io/bbolt"
)

// The delegation ops (PROTOCOL.md, docs/delegation.md): register, agents,
// task.submit, task.done, task.fail, task.get, task.cancel, task.watch and
// task.unwatch, and the pushes task, task.revoked and task.update.

// list reads a field holding a JSON array.
func (r *request) list(name string, required bool, max int) ([]json.RawMessage, error) {
	if !r.has(name) {
		if required {
			return nil, badField("%s is required", name)
		}
		return nil, nil
	}
	var out []json.RawMessage
	if err := json.Unmarshal(r.fields[name], &out); err != nil || len(out) > max {
		return nil, badField("%s must be an array of at most %d items", name, max)
	}
	return out, nil
}

// sub reads an element of a list as a request of its own fields.
func sub(raw json.RawMessage, what string) (*request, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return nil, badField("%s must be an object", what)
	}
	return &request{fields: fields}, nil
}

func (r *request) boolean(name string) (bool, error) {
	if !r.has(name) {
		return false, nil
	}
	switch string(r.fields[name]) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, badField("%s must be true or false", name)
}

func (c *conn) opRegister(r *request) error {
	list, err := r.list("capabilities", true, route.MaxCaps)
	if err != nil {
		return err
	}
	a := &route.RegisterArgs{Agent: c.agent, Conn: c.id}
	for i, raw := range list {
		s, err := sub(raw, "capabilities["+strconv.Itoa(i)+"]")
		if err != nil {
			return err
		}
		name, err := s.str("name", true)
		if err != nil {
			return badField("capabilities[%d].name is required", i)
		}
		if !route.ValidCapName(name) {
			return badField("capabilities[%d].name must be dot-separated [A-Za-z0-9_-] parts, at most %d bytes", i, route.MaxCapLen)
		}
		max, err := s.int("max_inflight", false, 1, route.MaxInflight, 1)
		if err != nil {
			return badField("capabilities[%d].max_inflight must be an integer between 1 and %d", i, route.MaxInflight)
		}
		if err := c.allow(auth.OpRegister, name); err != nil {
			return err
		}
		a.Caps = append(a.Caps, route.Cap{Name: name, MaxInflight: int(max)})
	}
	if r.has("meta") {
		meta, _ := r.raw("meta")
		if len(meta) == 0 || meta[0] != '{' || len(meta) > route.MaxMetaLen {
			return badField("meta must be an object of at most %d bytes", route.MaxMetaLen)
		}
		a.Meta = meta
	}
	if err := a.Check(); err != nil {
		return badField("%s", err.Error())
	}
	return c.submit(r, fsm.TypeRegister, a)
}

// agentView is an agent as the agents op reports it.
type agentView struct {
	Name         string          `json:"name"`
	Online       bool            `json:"online"`
	Nodes        []string        `json:"nodes"`
	Capabilities []route.Cap     `json:"capabilities"`
	Meta         json.RawMessage `json:"meta,omitempty"`
	Since        int64           `json:"since"`
	OfflineSince int64           `json:"offline_since,omitempty"`
	LastActive   int64           `json:"last_active"`
	Succeeded    int64           `json:"succeeded"`
	Failed       int64           `json:"failed"`
	RecentOK     int             `json:"recent_succeeded"`
	RecentFailed int             `json:"recent_failed"`
}

// AgentViews lists every agent that ever registered, as of this node's
// applied state.
func AgentViews(tx *bolt.Tx) ([]agentView, error) {
	out := []agentView{}
	err := route.List(tx, func(a *route.Agent) error {
		v := agentView{Name: a.Name, Online: a.Online(), Nodes: []string{}, Capabilities: a.Caps, Meta: a.Meta,
			Since: a.Since, OfflineSince: a.Seen, LastActive: a.Active, Succeeded: a.Succeeded, Failed: a.Failed}
		v.RecentOK, v.RecentFailed = a.RecentCounts()
		for _, c := range a.Conns {
			if n := queue.ConnNode(c); !slices.Contains(v.Nodes, n) {
				v.Nodes = append(v.Nodes, n)
			}
		}
		out = append(out, v)
		return nil
	})
	return out, err
}

func (c *conn) opAgents(r *request) error {
	var list []agentView
	if err := c.s.node.Read(func(tx *bolt.Tx) error {
		var err error
		list, err = AgentViews(tx)
		return err
	}); err != nil {
		return err
	}
	c.sendOK(r.rid, "agents", list)
	return nil
}

func (c *conn) opTaskSubmit(r *request) error {
	list, err := r.list("tasks", true, task.MaxTasksPerSubmit)
	if err != nil {
		return err
	}
	a := &task.SubmitArgs{From: c.agent, Limits: c.s.opt.TaskLimits}
	if a.Parent, err = r.str("parent", false); err != nil {
		return err
	}
	if a.Intent, err = r.str("intent", false); err != nil {
		return err
	}
	for i, raw := range list {
		at := "tasks[" + strconv.Itoa(i) + "]"
		s, err := sub(raw, at)
		if err != nil {
			return err
		}
		var sp task.Spec
		if sp.Ref, err = s.str("ref", true); err != nil {
			return badField("%s.ref is required", at)
		}
		if sp.Capability, err = s.str("capability", true); err != nil {
			return badField("%s.capability is required", at)
		}
		if !route.ValidCapName(sp.Capability) {
			return badField("%s.capability must be dot-separated [A-Za-z0-9_-] parts", at)
		}
		if err := c.allow(auth.OpSubmit, sp.Capability); err != nil {
			return err
		}
		envRaw, err := s.raw("input")
		if err != nil {
			return badField("%s.input is required: the envelope of the task", at)
		}
		env, err := auth.ParseEnvelope(envRaw)
		if err != nil {
			return err
		}
		if err := c.checkEnvelope(env); err != nil {
			return err
		}
		sp.Input = env.Raw
		deps, err := s.list("deps", false, task.MaxDeps)
		if err != nil {
			return badField("%s.deps must be an array of refs", at)
		}
		for _, d := range deps {
			var ref string
			if json.Unmarshal(d, &ref) != nil {
				return badField("%s.deps must be an array of refs", at)
			}
			sp.Deps = append(sp.Deps, ref)
		}
		n, err := s.int("max_attempts", false, 1, task.MaxMaxAttempts, 0)
		if err != nil {
			return err
		}
		sp.MaxAttempts = int(n)
		if sp.TimeoutMs, err = s.int("timeout_ms", false, task.MinTimeoutMs, task.MaxTimeoutMs, 0); err != nil {
			return err
		}
		if sp.Approval, err = s.boolean("approval"); err != nil {
			return err
		}
		a.Tasks = append(a.Tasks, sp)
	}
	if err := fsmTaskErr(a.Check()); err != nil {
		return err
	}
	return c.submit(r, fsm.TypeTaskSubmit, a)
}

// fsmTaskErr maps a check of package task to the protocol's error.
func fsmTaskErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, task.ErrCycle):
		return perr("cycle", "%s", err.Error())
	default:
		return badField("%s", err.Error())
	}
}

func taskSettleOp(t fsm.MessageType) opHandler {
	return func(c *conn, r *request) error {
		id, err := r.str("task", true)
		if err != nil {
			return err
		}
		attempt, err := r.int("attempt", true, 1, task.MaxMaxAttempts, 0)
		if err != nil {
			return err
		}
		a := &task.SettleArgs{Task: id, Attempt: int(attempt), Agent: c.agent}
		if t == fsm.TypeTaskDone {
			if r.has("output") {
				a.Output, _ = r.raw("output")
			}
			a.MaxOutput = c.s.opt.TaskLimits.MaxOutput
			if a.MaxOutput > 0 && int64(len(a.Output)) > a.MaxOutput {
				return badField("output must be at most %d bytes", a.MaxOutput)
			}
		} else {
			if a.Error, err = r.str("error", false); err != nil {
				return err
			}
			if len(a.Error) > task.MaxErrorLen {
				return badField("error must be at most %d bytes", task.MaxErrorLen)
			}
			if a.Retry, err = r.boolean("retry"); err != nil {
				return err
			}
		}
		return c.submit(r, t, a)
	}
}

// readTask reads a task and checks that this agent may see it: in dev
// mode any, else one it took part in.
func (c *conn) readTask(id string) (*task.Task, error) {
	var k *task.Task
	if err := c.s.node.Read(func(tx *bolt.Tx) error {
		var err error
		k, err = task.Get(tx, id)
		if err == nil && k == nil {
			// A graph id: its first task stands for it.
			if ids := task.Reached(tx, id); len(ids) > 0 {
				k, err = task.Get(tx, ids[0])
			}
		}
		return err
	}); err != nil {
		return nil, err
	}
	if k == nil {
		return nil, perr("not_found", "no task or graph %q", id)
	}
	if c.ident != nil && c.ident.rec != nil && !k.Involves(c.agent) {
		return nil, perr("forbidden", "agent %q took no part in task %s", c.agent, k.ID)
	}
	return k, nil
}

func (c *conn) opTaskGet(r *request) error {
	id, err := r.str("task", true)
	if err != nil {
		return err
	}
	k, err := c.readTask(id)
	if err != nil {
		return err
	}
	if k.ID != id {
		// A graph: every task of it, in id order.
		var tasks []*task.Task
		if err := c.s.node.Read(func(tx *bolt.Tx) error {
			for _, tid := range task.Reached(tx, id) {
				t, err := task.Get(tx, tid)
				if err != nil {
					return err
				}
				if t != nil && t.Graph == id {
					tasks = append(tasks, t)
				}
			}
			return nil
		}); err != nil {
			return err
		}
		c.sendOK(r.rid, "graph", id, "tasks", tasks)
		return nil
	}
	c.sendOK(r.rid, "task", k)
	return nil
}

func (c *conn) opTaskCancel(r *request) error {
	id, err := r.str("task", true)
	if err != nil {
		return err
	}
	reason, err := r.str("reason", false)
	if err != nil {
		return err
	}
	if len(reason) > task.MaxReasonLen {
		return badField("reason must be at most %d bytes", task.MaxReasonLen)
	}
	return c.submit(r, fsm.TypeTaskCancel, &task.CancelArgs{Task: id, Agent: c.agent, Reason: reason})
}

// taskWatches are this node's task.watch subscriptions: by the task or
// graph id watched, the connections and their watch ids.
type taskWatches struct {
	mu    sync.Mutex
	next  uint64
	byKey map[string]map[*conn][]uint64
}

func (c *conn) opTaskWatch(r *request) error {
	id, err := r.str("task", true)
	if err != nil {
		return err
	}
	if _, err := c.readTask(id); err != nil {
		return err
	}
	w := &c.s.watches
	w.mu.Lock()
	w.next++
	n := w.next
	if w.byKey == nil {
		w.byKey = map[string]map[*conn][]uint64{}
	}
	if w.byKey[id] == nil {
		w.byKey[id] = map[*conn][]uint64{}
	}
	w.byKey[id][c] = append(w.byKey[id][c], n)
	w.mu.Unlock()
	c.watchMu.Lock()
	if c.watching == nil {
		c.watching = map[uint64]string{}
	}
	c.watching[n] = id
	c.watchMu.Unlock()
	c.sendOK(r.rid, "watch", "w"+strconv.FormatUint(n, 10))
	return nil
}

func (c *conn) opTaskUnwatch(r *request) error {
	n, ok, err := idField(r, "watch", 'w')
	if err != nil {
		return err
	}
	c.watchMu.Lock()
	id, mine := c.watching[n]
	delete(c.watching, n)
	c.watchMu.Unlock()
	if !ok || !mine {
		return perr("not_found", "no such watch on this connection")
	}
	c.s.watches.drop(c, id, n)
	c.sendOK(r.rid)
	return nil
}

func (w *taskWatches) drop(c *conn, id string, n uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.byKey[id]
	m[c] = slices.DeleteFunc(m[c], func(x uint64) bool { return x == n })
	if len(m[c]) == 0 {
		delete(m, c)
	}
	if len(m) == 0 {
		delete(w.byKey, id)
	}
}

// dropWatches ends a closing connection's watches.
func (c *conn) dropWatches() {
	c.watchMu.Lock()
	ws := c.watching
	c.watching = nil
	c.watchMu.Unlock()
	for n, id := range ws {
		c.s.watches.drop(c, id, n)
	}
}

// taskUpdated hands a task's change to the connections watching it or
// one of its lineage on this node.
func (s *Server) taskUpdated(u *task.Updated) {
	k := u.Task
	keys := append([]string{k.ID}, k.Lineage...)
	type target struct {
		c *conn
		n uint64
	}
	var targets []target
	s.watches.mu.Lock()
	for _, key := range keys {
		for c, ns := range s.watches.byKey[key] {
			for _, n := range ns {
				targets = append(targets, target{c, n})
			}
		}
	}
	s.watches.mu.Unlock()
	for _, t := range targets {
		t.c.Push(&taskUpdate{watch: t.n, task: k})
	}
}

// taskUpdate is a task.update push for one watch.
type taskUpdate struct {
	watch uint64
	task  *task.Task
}

// Target implements queue.Effect.
func (*taskUpdate) Target() string { return "" }

// taskSummary is a task as pushes show it: what an agent working on it
// or watching it needs, without the history.
type taskSummary struct {
	ID         string                     `json:"id"`
	Ref        string                     `json:"ref"`
	Graph      string                     `json:"graph"`
	Parent     string                     `json:"parent,omitempty"`
	Capability string                     `json:"capability"`
	State      string                     `json:"state,omitempty"`
	Input      json.RawMessage            `json:"input,omitempty"`
	Intent     string                     `json:"intent,omitempty"`
	Origin     string                     `json:"origin"`
	Chain      []string                   `json:"chain"`
	DepsOutput map[string]json.RawMessage `json:"deps_output,omitempty"`
	Agent      string                     `json:"agent,omitempty"`
	Attempt    int                        `json:"attempt,omitempty"`
	Output     json.RawMessage            `json:"output,omitempty"`
	Error      string                     `json:"error,omitempty"`
	Updated    int64                      `json:"updated,omitempty"`
}

func renderTaskPush(p *task.Push) []byte {
	k := p.Task
	deps := p.DepsOutput
	if deps == nil {
		deps = map[string]json.RawMessage{}
	}
	for r, o := range deps {
		if len(o) == 0 {
			deps[r] = json.RawMessage("null")
		}
	}
	b, _ := json.Marshal(struct {
		Op         string      `json:"op"`
		Task       taskSummary `json:"task"`
		Attempt    int         `json:"attempt"`
		LeaseUntil int64       `json:"lease_until"`
	}{"task", taskSummary{ID: k.ID, Ref: k.Ref, Graph: k.Graph, Parent: k.Parent, Capability: k.Capability, Input: k.Input,
		Intent: k.Intent, Origin: k.Origin, Chain: k.Chain, DepsOutput: deps}, k.Attempt, k.LeaseUntil})
	return b
}

// The push frames are structs, so that op comes first as on every other
// frame (docs/protocol.md).

func renderTaskRevoked(r *task.Revoked) []byte {
	b, _ := json.Marshal(struct {
		Op      string `json:"op"`
		Task    string `json:"task"`
		Attempt int    `json:"attempt"`
		Reason  string `json:"reason"`
	}{"task.revoked", r.Task, r.Attempt, r.Reason})
	return b
}

func renderTaskUpdate(u *taskUpdate) []byte {
	k := u.task
	b, _ := json.Marshal(struct {
		Op    string      `json:"op"`
		Watch string      `json:"watch"`
		Task  taskSummary `json:"task"`
	}{"task.update", "w" + strconv.FormatUint(u.watch, 10),
		taskSummary{ID: k.ID, Ref: k.Ref, Graph: k.Graph, Parent: k.Parent, Capability: k.Capability, State: k.State,
			Origin: k.Origin, Chain: k.Chain, Agent: k.Agent, Attempt: k.Attempt, Output: k.Output, Error: k.Error, Updated: k.Updated}})
	return b
}
