package task

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/mcpd/mcpd/route"
	"github.com/vmihailenco/msgpack/v5"
	bolt "go.etcd.io/bbolt"
)

// Spec is one task of a submitted graph.
type Spec struct {
	Ref         string          `msgpack:"r"`
	Capability  string          `msgpack:"c"`
	Input       json.RawMessage `msgpack:"i"` // the envelope the submitter signed
	Deps        []string        `msgpack:"d,omitempty"`
	MaxAttempts int             `msgpack:"ma,omitempty"`
	TimeoutMs   int64           `msgpack:"to,omitempty"`
	BackoffMs   []int64         `msgpack:"bo,omitempty"`
	Approval    bool            `msgpack:"ap,omitempty"`
}

// SubmitArgs is a task.submit: a graph of tasks, from an agent, maybe
// under a task it works on.
type SubmitArgs struct {
	From   string `msgpack:"f"`
	Parent string `msgpack:"p,omitempty"`
	Intent string `msgpack:"it,omitempty"`
	Tasks  []Spec `msgpack:"t"`
	Limits Limits `msgpack:"l"`
}

// SubmitResult maps each ref to its task id; Root is the graph's id.
type SubmitResult struct {
	IDs  map[string]string `msgpack:"ids"`
	Root string            `msgpack:"root"`
}

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, args...))
}

// Check validates a submission on its own: refs, capabilities, settings,
// dependencies (unknown → ErrBadRequest, a cycle → ErrCycle).
func (a *SubmitArgs) Check() error {
	if a.From == "" {
		return bad("a submission names its agent")
	}
	if len(a.Tasks) == 0 || len(a.Tasks) > MaxTasksPerSubmit {
		return bad("tasks: 1 to %d tasks", MaxTasksPerSubmit)
	}
	if len(a.Intent) > MaxIntentLen {
		return bad("intent: at most %d bytes", MaxIntentLen)
	}
	index := make(map[string]int, len(a.Tasks))
	for i, s := range a.Tasks {
		switch {
		case s.Ref == "" || len(s.Ref) > MaxRefLen:
			return bad("tasks[%d].ref: 1 to %d bytes", i, MaxRefLen)
		case !route.ValidCapName(s.Capability):
			return bad("tasks[%d].capability: %s", i, route.CapNameRule)
		case len(s.Input) == 0 || !json.Valid(s.Input):
			return bad("tasks[%d].input: the envelope is missing or not JSON", i)
		case s.MaxAttempts < 0 || s.MaxAttempts > MaxMaxAttempts:
			return bad("tasks[%d].max_attempts: 1 to %d", i, MaxMaxAttempts)
		case s.TimeoutMs != 0 && (s.TimeoutMs < MinTimeoutMs || s.TimeoutMs > MaxTimeoutMs):
			return bad("tasks[%d].timeout_ms: %d to %d", i, MinTimeoutMs, MaxTimeoutMs)
		case len(s.Deps) > MaxDeps || len(s.BackoffMs) > 32:
			return bad("tasks[%d]: at most %d deps and 32 backoff steps", i, MaxDeps)
		}
		for _, b := range s.BackoffMs {
			if b < 0 || b > MaxTimeoutMs {
				return bad("tasks[%d].backoff_ms: each step 0 to %d", i, MaxTimeoutMs)
			}
		}
		if _, dup := index[s.Ref]; dup {
			return bad("tasks[%d].ref: %q is used twice", i, s.Ref)
		}
		index[s.Ref] = i
	}
	// Unknown deps first, then cycles (Kahn's algorithm in submission
	// order, so that the error names the same task on every node).
	indeg := make([]int, len(a.Tasks))
	dependents := make([][]int, len(a.Tasks))
	for i, s := range a.Tasks {
		for k, d := range s.Deps {
			j, ok := index[d]
			if !ok {
				return bad("tasks[%d].deps: no task with ref %q in this submission", i, d)
			}
			if slices.Contains(s.Deps[:k], d) {
				return bad("tasks[%d].deps: %q listed twice", i, d)
			}
			indeg[i]++
			dependents[j] = append(dependents[j], i)
		}
	}
	var queue []int
	for i := range a.Tasks {
		if indeg[i] == 0 {
			queue = append(queue, i)
		}
	}
	seen := 0
	for len(queue) > 0 {
		i := queue[0]
		queue = queue[1:]
		seen++
		for _, j := range dependents[i] {
			if indeg[j]--; indeg[j] == 0 {
				queue = append(queue, j)
			}
		}
	}
	if seen != len(a.Tasks) {
		for i := range a.Tasks {
			if indeg[i] > 0 {
				return fmt.Errorf("%w: the dependencies of task %q form a cycle", ErrCycle, a.Tasks[i].Ref)
			}
		}
	}
	return nil
}

// Submit stores a graph of tasks at once, or nothing: the caller's
// transaction rolls back on an error (the FSM applies each command's
// writes only when it succeeds). Tasks without dependencies are ready
// (or held) at once.
func (t *Tx) Submit(a SubmitArgs) (*SubmitResult, error) {
	if err := a.Check(); err != nil {
		return nil, err
	}
	// A submission repeated (a client retrying after a lost reply) gets
	// the first one's result; its key is the sender and the id of its
	// first task's envelope.
	key, sum := submitKey(a)
	if raw := t.b(bucketSubmits).Get(key); raw != nil {
		var rec submitRec
		if err := msgpack.Unmarshal(raw, &rec); err != nil {
			return nil, fmt.Errorf("decode submission %q: %w", key, err)
		}
		if rec.Sum != sum {
			return nil, fmt.Errorf("%w: envelope id %s was already used for another submission", ErrConflict, envID(a.Tasks[0].Input))
		}
		res := &SubmitResult{IDs: make(map[string]string, len(a.Tasks)), Root: rec.Root}
		for i, s := range a.Tasks {
			res.IDs[s.Ref] = rec.IDs[i]
		}
		return res, nil
	}
	origin, intent := a.From, a.Intent
	chain := []string{a.From}
	var lineage []string
	var hops []Hop
	if a.Parent != "" {
		p, err := t.load(a.Parent)
		if err != nil {
			return nil, err
		}
		if p == nil {
			return nil, fmt.Errorf("%w: no task %q", ErrNotFound, a.Parent)
		}
		if p.State != StateAssigned || p.Agent != a.From {
			return nil, fmt.Errorf("%w: only the agent working on task %s submits tasks under it", ErrForbidden, p.ID)
		}
		if !a.Limits.AllowRepeat && slices.Contains(p.Chain, a.From) {
			return nil, fmt.Errorf("%w: delegation loop: %s is already in the chain %v of task %s", ErrForbidden, a.From, p.Chain, p.ID)
		}
		if a.Limits.MaxDepth > 0 && len(p.Chain)+1 > a.Limits.MaxDepth {
			return nil, fmt.Errorf("%w: delegation depth: the chain of task %s holds %d agents, the budget is %d", ErrForbidden, p.ID, len(p.Chain), a.Limits.MaxDepth)
		}
		if a.Limits.MaxFanout > 0 && p.Fanout+len(a.Tasks) > a.Limits.MaxFanout {
			return nil, fmt.Errorf("%w: delegation fan-out: task %s has %d sub-tasks, %d more exceed the budget of %d", ErrForbidden, p.ID, p.Fanout, len(a.Tasks), a.Limits.MaxFanout)
		}
		p.Fanout += len(a.Tasks)
		origin, intent = p.Origin, p.Intent
		chain = append(slices.Clone(p.Chain), a.From)
		lineage = append(slices.Clone(p.Lineage), p.ID)
		hops = slices.Clone(p.Hops)
	}
	graph, err := t.newID("g")
	if err != nil {
		return nil, err
	}
	lineage = append(lineage, graph)
	res := &SubmitResult{IDs: make(map[string]string, len(a.Tasks)), Root: graph}
	ids := make([]string, len(a.Tasks))
	for i, s := range a.Tasks {
		if ids[i], err = t.newID("t"); err != nil {
			return nil, err
		}
		res.IDs[s.Ref] = ids[i]
	}
	var fresh []*Task
	for i, s := range a.Tasks {
		k := &Task{
			ID: ids[i], Ref: s.Ref, Graph: graph, Capability: s.Capability, Input: s.Input,
			Parent: a.Parent, Lineage: lineage, Origin: origin, Intent: intent, Chain: chain,
			Hops:        append(slices.Clone(hops), Hop{Agent: a.From, Task: ids[i], Env: s.Input}),
			MaxAttempts: s.MaxAttempts, TimeoutMs: s.TimeoutMs, BackoffMs: s.BackoffMs, Approval: s.Approval,
			State: StateWaiting, Pending: len(s.Deps), Created: t.now,
		}
		if k.MaxAttempts == 0 {
			k.MaxAttempts = DefaultMaxAttempts
		}
		if k.TimeoutMs == 0 {
			k.TimeoutMs = DefaultTimeoutMs
		}
		for _, d := range s.Deps {
			k.Deps = append(k.Deps, res.IDs[d])
			k.DepRefs = append(k.DepRefs, d)
			if err := t.b(bucketDependents).Put(pairKey(res.IDs[d], k.ID), nil); err != nil {
				return nil, err
			}
		}
		for _, anc := range lineage {
			if err := t.b(bucketLineage).Put(pairKey(anc, k.ID), nil); err != nil {
				return nil, err
			}
		}
		k.log(t.now, "submitted", a.From, 0, "")
		t.keep(k)
		fresh = append(fresh, k)
	}
	for _, k := range fresh {
		if k.Pending == 0 {
			if err := t.enter(k); err != nil {
				return nil, err
			}
		}
		t.changed(k)
	}
	raw, err := msgpack.Marshal(&submitRec{Sum: sum, Root: graph, IDs: ids})
	if err != nil {
		return nil, err
	}
	return res, t.b(bucketSubmits).Put(key, raw)
}

// submitRec remembers a submission for its retries: its graph and the
// ids of its tasks in submission order (a list, not a map: what is
// stored must encode the same on every replica).
type submitRec struct {
	Sum  [32]byte `msgpack:"s"`
	Root string   `msgpack:"r"`
	IDs  []string `msgpack:"i"`
}

// envID is the id of an envelope ("" when it has none).
func envID(env json.RawMessage) string {
	var e struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(env, &e)
	return e.ID
}

// submitKey is a submission's dedup key and the digest of its content.
func submitKey(a SubmitArgs) ([]byte, [32]byte) {
	body, _ := msgpack.Marshal(struct {
		P string `msgpack:"p"`
		I string `msgpack:"i"`
		T []Spec `msgpack:"t"`
	}{a.Parent, a.Intent, a.Tasks})
	return pairKey(a.From, envID(a.Tasks[0].Input)), sha256.Sum256(body)
}

// enter moves a task whose dependencies all succeeded on: held when it
// needs an operator's approval (its own flag, or a sensitive
// capability), else ready.
func (t *Tx) enter(k *Task) error {
	if (k.Approval || t.b(bucketSensitive).Get([]byte(k.Capability)) != nil) && !k.approved() {
		k.State = StateHeld
		k.log(t.now, "held", "", 0, "waiting for an operator's approval")
		return nil
	}
	k.log(t.now, "ready", "", 0, "")
	return t.makeReady(k)
}

func (k *Task) approved() bool {
	for _, e := range k.History {
		if e.Event == "approved" {
			return true
		}
	}
	return false
}

// SettleArgs names an attempt of a task: task.done and task.fail.
type SettleArgs struct {
	Task      string          `msgpack:"t"`
	Attempt   int             `msgpack:"n"`
	Agent     string          `msgpack:"a"`
	Output    json.RawMessage `msgpack:"o,omitempty"` // done
	Error     string          `msgpack:"e,omitempty"` // fail
	Retry     bool            `msgpack:"r,omitempty"` // fail
	MaxOutput int64           `msgpack:"mo,omitempty"`
}

// held loads the task an agent holds at that attempt.
func (t *Tx) held(a SettleArgs) (*Task, error) {
	k, err := t.load(a.Task)
	if err != nil {
		return nil, err
	}
	if k == nil || k.State != StateAssigned || k.Attempt != a.Attempt || k.Agent != a.Agent {
		return nil, fmt.Errorf("%w: %s holds no attempt %d of task %q", ErrNotFound, a.Agent, a.Attempt, a.Task)
	}
	return k, nil
}

// unlease ends a task's current attempt for its agent.
func (t *Tx) unlease(k *Task, ok bool) error {
	if err := t.b(bucketTimers).Delete(timerKey(k.LeaseUntil, k.ID)); err != nil {
		return err
	}
	if err := t.b(bucketHeld).Delete(pairKey(k.Agent, k.ID)); err != nil {
		return err
	}
	if err := route.Finished(t.tx, t.now, k.Agent, k.Capability, ok); err != nil {
		return err
	}
	t.markDirty(k.Capability)
	k.Conn, k.LeaseUntil = "", 0
	return nil
}

// Done records a task's output: it succeeded, and its dependents whose
// dependencies have all succeeded move on.
func (t *Tx) Done(a SettleArgs) error {
	k, err := t.held(a)
	if err != nil {
		return err
	}
	if a.MaxOutput > 0 && int64(len(a.Output)) > a.MaxOutput {
		return bad("output: %d bytes, the limit is %d", len(a.Output), a.MaxOutput)
	}
	if err := t.unlease(k, true); err != nil {
		return err
	}
	k.State, k.Output = StateSucceeded, a.Output
	k.log(t.now, "succeeded", a.Agent, k.Attempt, "")
	t.changed(k)
	for _, id := range t.pairs(bucketDependents, k.ID) {
		d, err := t.load(id)
		if err != nil {
			return err
		}
		if d == nil || d.State != StateWaiting {
			continue
		}
		if d.Pending--; d.Pending == 0 {
			if err := t.enter(d); err != nil {
				return err
			}
		}
		t.changed(d)
	}
	return nil
}

// Fail ends an attempt as failed: retried after its backoff when the
// agent asks for it and attempts remain, else failed for good, which
// cancels its dependents and what was delegated under it.
func (t *Tx) Fail(a SettleArgs) error {
	if len(a.Error) > MaxErrorLen {
		return bad("error: at most %d bytes", MaxErrorLen)
	}
	k, err := t.held(a)
	if err != nil {
		return err
	}
	if err := t.unlease(k, false); err != nil {
		return err
	}
	k.log(t.now, "failed", a.Agent, k.Attempt, a.Error)
	return t.failed(k, a.Error, a.Retry)
}

// failed goes on after a failed attempt (reported, or a lapsed lease).
func (t *Tx) failed(k *Task, reason string, retry bool) error {
	k.Error = reason
	if retry && k.Attempt < k.MaxAttempts {
		steps := k.BackoffMs
		if steps == nil {
			steps = DefaultBackoffMs
		}
		var wait int64
		if len(steps) > 0 {
			wait = steps[min(k.Attempt, len(steps))-1]
		}
		k.State, k.NotBefore = StateReady, t.now+wait
		k.log(t.now, "retry", "", k.Attempt+1, fmt.Sprintf("after %d ms", wait))
		t.changed(k)
		if wait == 0 {
			return t.makeReady(k)
		}
		return t.b(bucketTimers).Put(timerKey(k.NotBefore, k.ID), nil)
	}
	k.State = StateFailed
	t.changed(k)
	return t.cascade(k, fmt.Sprintf("%s %s: %s", k.ID, StateFailed, reason))
}

// cascade cancels what can no longer run after k ended without success:
// its dependents, and the tasks delegated under it.
func (t *Tx) cascade(k *Task, why string) error {
	ids := slices.Concat(t.pairs(bucketDependents, k.ID), t.pairs(bucketLineage, k.ID))
	for _, id := range ids {
		d, err := t.load(id)
		if err != nil {
			return err
		}
		if d == nil || Final(d.State) {
			continue
		}
		if err := t.cancel(d, "dependency or parent "+why); err != nil {
			return err
		}
	}
	return nil
}

// cancel ends a task that has not ended, and what depends on it.
func (t *Tx) cancel(k *Task, reason string) error {
	switch k.State {
	case StateAssigned:
		if t.isLocal(k.Conn) {
			t.Effects = append(t.Effects, &Revoked{Conn: k.Conn, Task: k.ID, Attempt: k.Attempt, Reason: reason})
		}
		if err := route.Released(t.tx, k.Agent, k.Capability); err != nil {
			return err
		}
		t.markDirty(k.Capability)
		if err := t.b(bucketTimers).Delete(timerKey(k.LeaseUntil, k.ID)); err != nil {
			return err
		}
		if err := t.b(bucketHeld).Delete(pairKey(k.Agent, k.ID)); err != nil {
			return err
		}
		k.Conn, k.LeaseUntil = "", 0
	case StateReady:
		if k.NotBefore != 0 {
			if err := t.b(bucketTimers).Delete(timerKey(k.NotBefore, k.ID)); err != nil {
				return err
			}
		} else if err := t.unready(k); err != nil {
			return err
		}
		k.NotBefore = 0
	}
	k.State, k.Error = StateCancelled, reason
	t.ended++
	k.log(t.now, "cancelled", "", 0, reason)
	t.changed(k)
	return t.cascade(k, k.ID+" "+StateCancelled)
}

// CancelArgs is a task.cancel of a task or a whole graph, by an agent
// (its origin or submitter) or an operator.
type CancelArgs struct {
	Task     string `msgpack:"t"`
	Agent    string `msgpack:"a,omitempty"`
	Operator string `msgpack:"op,omitempty"`
	Reason   string `msgpack:"r,omitempty"`
}

// Cancel cancels a task, or every task of a graph, with everything
// delegated under them and what depends on them. It answers how many
// tasks it ended.
func (t *Tx) Cancel(a CancelArgs) (int, error) {
	if len(a.Reason) > MaxReasonLen {
		return 0, bad("reason: at most %d bytes", MaxReasonLen)
	}
	targets := t.pairs(bucketLineage, a.Task)
	k, err := t.load(a.Task)
	if err != nil {
		return 0, err
	}
	if k != nil {
		targets = append([]string{k.ID}, targets...)
	} else if len(targets) == 0 {
		return 0, fmt.Errorf("%w: no task or graph %q", ErrNotFound, a.Task)
	}
	first, err := t.load(targets[0])
	if err != nil || first == nil {
		return 0, fmt.Errorf("task %q of %q: %v", targets[0], a.Task, err)
	}
	if a.Operator == "" && a.Agent != first.Origin && a.Agent != first.Submitter() {
		return 0, fmt.Errorf("%w: only its origin %s or its submitter %s cancels %s", ErrForbidden, first.Origin, first.Submitter(), a.Task)
	}
	who := a.Agent
	if a.Operator != "" {
		who = "operator " + a.Operator
	}
	reason := "cancelled by " + who
	if a.Reason != "" {
		reason += ": " + a.Reason
	}
	// The count is of every task it ended: the targets, and what the
	// cascade ended with them (dependents, delegated children).
	before := t.ended
	for _, id := range targets {
		d, err := t.load(id)
		if err != nil {
			return 0, err
		}
		if d == nil || Final(d.State) {
			continue
		}
		if err := t.cancel(d, reason); err != nil {
			return 0, err
		}
	}
	return t.ended - before, nil
}

// DecideArgs is an operator's decision on a held task.
type DecideArgs struct {
	Task     string `msgpack:"t"`
	Operator string `msgpack:"op"`
	Approve  bool   `msgpack:"ok"`
	Reason   string `msgpack:"r,omitempty"`
}

// Decide approves a held task (it becomes ready) or denies it (it is
// cancelled with the reason, and what depends on it).
func (t *Tx) Decide(a DecideArgs) error {
	if a.Operator == "" || len(a.Reason) > MaxReasonLen {
		return bad("a decision names its operator, and a reason of at most %d bytes", MaxReasonLen)
	}
	k, err := t.load(a.Task)
	if err != nil {
		return err
	}
	if k == nil {
		return fmt.Errorf("%w: no task %q", ErrNotFound, a.Task)
	}
	if k.State != StateHeld {
		return fmt.Errorf("%w: task %s is %s, not held", ErrConflict, k.ID, k.State)
	}
	if a.Approve {
		k.log(t.now, "approved", "", 0, "by "+a.Operator+reasonSuffix(a.Reason))
		k.log(t.now, "ready", "", 0, "")
		t.changed(k)
		return t.makeReady(k)
	}
	k.log(t.now, "denied", "", 0, "by "+a.Operator+reasonSuffix(a.Reason))
	return t.cancel(k, "denied by operator "+a.Operator+reasonSuffix(a.Reason))
}

func reasonSuffix(r string) string {
	if r == "" {
		return ""
	}
	return ": " + r
}

// SetSensitive marks a capability sensitive (its tasks wait for an
// operator's approval) or clears the mark.
func (t *Tx) SetSensitive(capName, operator string, on bool) error {
	if !route.ValidCapName(capName) {
		return bad("capability: %s", route.CapNameRule)
	}
	if on {
		return t.b(bucketSensitive).Put([]byte(capName), []byte(operator))
	}
	return t.b(bucketSensitive).Delete([]byte(capName))
}

// Expire handles the timers due at the transaction's time: a lapsed
// lease is a failed attempt (retried while attempts remain), a retry
// whose time came makes its task ready.
func (t *Tx) Expire() error {
	type due struct {
		key []byte
		id  string
	}
	var todo []due
	c := t.b(bucketTimers).Cursor()
	for k, _ := c.First(); k != nil && int64(beUint64(k)) <= t.now; k, _ = c.Next() {
		todo = append(todo, due{key: slices.Clone(k), id: string(k[8:])})
	}
	for _, d := range todo {
		if err := t.b(bucketTimers).Delete(d.key); err != nil {
			return err
		}
		k, err := t.load(d.id)
		if err != nil {
			return err
		}
		switch {
		case k == nil:
			return fmt.Errorf("timer for task %q, which does not exist", d.id)
		case k.State == StateAssigned && k.LeaseUntil <= t.now:
			if t.isLocal(k.Conn) {
				t.Effects = append(t.Effects, &Revoked{Conn: k.Conn, Task: k.ID, Attempt: k.Attempt, Reason: "the lease ran out"})
			}
			agent := k.Agent
			if err := t.unlease(k, false); err != nil {
				return err
			}
			k.log(t.now, "timeout", agent, k.Attempt, fmt.Sprintf("no result within %d ms", k.TimeoutMs))
			if err := t.failed(k, "timeout", true); err != nil {
				return err
			}
		case k.State == StateReady && k.NotBefore != 0 && k.NotBefore <= t.now:
			if err := t.makeReady(k); err != nil {
				return err
			}
		}
	}
	return nil
}

// AgentChanged makes the capabilities an agent registered routable
// again (it came online, or registered room for more).
func (t *Tx) AgentChanged(a *route.Agent) {
	for _, c := range a.Caps {
		t.markDirty(c.Name)
	}
}

// NextDeadline is the time of the earliest timer (a lease end or a
// retry), or 0 when there is none: the leader proposes an expiry then.
func NextDeadline(tx *bolt.Tx) int64 {
	k, _ := tx.Bucket(bucketTimers).Cursor().First()
	if k == nil {
		return 0
	}
	return int64(beUint64(k))
}

func beUint64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }
