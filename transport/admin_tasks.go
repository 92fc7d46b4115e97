package transport

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/route"
	"github.com/mcpd/mcpd/task"
	bolt "go.etcd.io/bbolt"
)

// The operator's side of delegation on the admin API
// (docs/delegation-cli.md): reading tasks, approving or denying held
// ones, cancelling, marking capabilities sensitive, and the presence of
// the agents. Decisions record the operator the request came from
// (Operator: operator:local on the socket, operator:token on the port).

// AdminDecision is the body of POST /v1/tasks/{id}/approve, /deny and
// /cancel; a denial needs a reason.
type AdminDecision struct {
	Reason string `json:"reason,omitempty"`
}

// AdminTaskGet is the answer of GET /v1/tasks/{id}: the task, or every
// task of the graph the id names (as task.get answers on WebSocket).
type AdminTaskGet struct {
	Task  *task.Task   `json:"task,omitempty"`
	Graph string       `json:"graph,omitempty"`
	Tasks []*task.Task `json:"tasks,omitempty"`
}

// AdminSensitive answers PUT and DELETE /v1/capabilities/{name}/sensitive.
type AdminSensitive struct {
	Capability string `json:"capability"`
	Sensitive  bool   `json:"sensitive"`
	Operator   string `json:"operator"`
}

func (a *Admin) routeTasks() {
	a.mux.HandleFunc("GET /v1/presence", a.presence)
	a.mux.HandleFunc("GET /v1/tasks", a.listTasks)
	a.mux.HandleFunc("GET /v1/tasks/{id}", a.getTask)
	a.mux.HandleFunc("POST /v1/tasks/{id}/approve", a.decideTask(true))
	a.mux.HandleFunc("POST /v1/tasks/{id}/deny", a.decideTask(false))
	a.mux.HandleFunc("POST /v1/tasks/{id}/cancel", a.cancelTask)
	a.mux.HandleFunc("GET /v1/capabilities/sensitive", a.listSensitive)
	a.mux.HandleFunc("PUT /v1/capabilities/{name}/sensitive", a.setSensitive(true))
	a.mux.HandleFunc("DELETE /v1/capabilities/{name}/sensitive", a.setSensitive(false))
}

// AdminTaskList is the answer of GET /v1/tasks: a page of tasks, newest
// first, the cursor of the next page ("" after the last), and how many
// tasks the whole state holds in each state (every state named, 0
// included), read in the same transaction as the page.
type AdminTaskList struct {
	Tasks  []AdminTaskRow   `json:"tasks"`
	Next   string           `json:"next"`
	Counts map[string]int64 `json:"counts"`
}

// AdminTaskRow is a listed task: the task as GET /v1/tasks/{id} answers
// it (input, intent, origin, chain, hops, history), with who submitted it
// (the last agent of its chain) and, for a held task, since when it
// waits for approval.
type AdminTaskRow struct {
	*task.Task
	Submitter string `json:"submitter"`
	HeldSince int64  `json:"held_since,omitempty"`
}

func taskRow(k *task.Task) AdminTaskRow {
	row := AdminTaskRow{Task: k}
	if len(k.Chain) > 0 {
		row.Submitter = k.Submitter()
	}
	if k.State == task.StateHeld {
		for _, e := range k.History {
			if e.Event == "held" {
				row.HeldSince = e.At
			}
		}
	}
	return row
}

// listQuery reads the query of GET /v1/tasks: state (repeated, or
// comma-separated), capability, graph, roots, before and limit. Anything
// else, or one of them twice, is refused; package task checks the
// values.
func listQuery(q url.Values) (task.ListFilter, error) {
	var f task.ListFilter
	for key, vs := range q {
		if key != "state" && len(vs) > 1 {
			return f, fmt.Errorf("%s: given %d times", key, len(vs))
		}
		v := vs[0]
		switch key {
		case "state":
			for _, v := range vs {
				f.States = append(f.States, strings.Split(v, ",")...)
			}
		case "capability":
			f.Capability = v
		case "graph":
			f.Graph = v
		case "before":
			f.Before = v
		case "roots":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return f, fmt.Errorf("roots: true or false (or 1 or 0), not %q", v)
			}
			f.Roots = b
		case "limit":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > task.MaxListLimit {
				return f, fmt.Errorf("limit: 1 to %d, not %q", task.MaxListLimit, v)
			}
			f.Limit = n
		default:
			return f, fmt.Errorf("unknown parameter %q: state, capability, graph, roots, before or limit", key)
		}
	}
	return f, f.Check()
}

// listTasks answers GET /v1/tasks (docs/delegation-cli.md): a page of
// the tasks a filter selects, newest first, with the counts by state.
func (a *Admin) listTasks(w http.ResponseWriter, r *http.Request) {
	f, err := listQuery(r.URL.Query())
	if err != nil {
		adminErr(w, http.StatusBadRequest, "bad_request", "%s", strings.TrimPrefix(err.Error(), task.ErrBadRequest.Error()+": "))
		return
	}
	var res AdminTaskList
	err = a.node.Read(func(tx *bolt.Tx) error {
		page, err := task.List(tx, f)
		if err != nil {
			return err
		}
		counts, err := task.CountStates(tx)
		if err != nil {
			return err
		}
		res = AdminTaskList{Tasks: make([]AdminTaskRow, 0, len(page.Tasks)), Next: page.Next, Counts: counts}
		for _, s := range task.States {
			counts[s] += 0
		}
		for _, k := range page.Tasks {
			res.Tasks = append(res.Tasks, taskRow(k))
		}
		return nil
	})
	switch {
	case errors.Is(err, task.ErrBadRequest):
		adminErr(w, http.StatusBadRequest, "bad_request", "%v", err)
	case err != nil:
		adminFail(w, err)
	default:
		adminJSON(w, http.StatusOK, res)
	}
}

// presence answers GET /v1/presence: every agent that ever registered
// capabilities, online or not, with its load and recent outcomes (the
// agents op's list). GET /v1/agents stays the list of identities.
func (a *Admin) presence(w http.ResponseWriter, r *http.Request) {
	var list []agentView
	if err := a.node.Read(func(tx *bolt.Tx) (err error) {
		list, err = AgentViews(tx)
		return err
	}); err != nil {
		adminFail(w, err)
		return
	}
	adminJSON(w, http.StatusOK, map[string]any{"agents": list})
}

// readTaskOrGraph reads a task, or the tasks of the graph id names; ok
// is false when it names neither.
func (a *Admin) readTaskOrGraph(id string) (res AdminTaskGet, ok bool, err error) {
	err = a.node.Read(func(tx *bolt.Tx) error {
		k, err := task.Get(tx, id)
		if err != nil || k != nil {
			res.Task, ok = k, k != nil
			return err
		}
		for _, tid := range task.Reached(tx, id) {
			t, err := task.Get(tx, tid)
			if err != nil {
				return err
			}
			if t != nil && t.Graph == id {
				res.Tasks = append(res.Tasks, t)
			}
		}
		if len(res.Tasks) > 0 {
			res.Graph, ok = id, true
		}
		return nil
	})
	return res, ok, err
}

func (a *Admin) getTask(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	res, ok, err := a.readTaskOrGraph(id)
	switch {
	case err != nil:
		adminFail(w, err)
	case !ok:
		adminErr(w, http.StatusNotFound, "not_found", "no task or graph %q", id)
	default:
		adminJSON(w, http.StatusOK, res)
	}
}

// decodeDecision reads an optional body with a reason.
func decodeDecision(w http.ResponseWriter, r *http.Request) (AdminDecision, bool) {
	var d AdminDecision
	if r.ContentLength != 0 {
		if err := decodeBody(r, &d); err != nil {
			adminErr(w, http.StatusBadRequest, "bad_request", "%v", err)
			return d, false
		}
	}
	if len(d.Reason) > task.MaxReasonLen {
		adminErr(w, http.StatusBadRequest, "bad_request", "reason: at most %d bytes", task.MaxReasonLen)
		return d, false
	}
	return d, true
}

// decideTask answers POST /v1/tasks/{id}/approve and /deny with the task
// as it is after the decision.
func (a *Admin) decideTask(approve bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		d, ok := decodeDecision(w, r)
		if !ok {
			return
		}
		if !approve && strings.TrimSpace(d.Reason) == "" {
			adminErr(w, http.StatusBadRequest, "bad_request", "a denial needs a reason (the agents and the audit log see it)")
			return
		}
		// The state machine answers a task that is not held with a
		// conflict; one that does not exist is told apart here.
		if _, found, err := a.readTaskOrGraph(id); err != nil || !found {
			if err != nil {
				adminFail(w, err)
			} else {
				adminErr(w, http.StatusNotFound, "not_found", "no task %q", id)
			}
			return
		}
		args := &task.DecideArgs{Task: id, Operator: Operator(r), Approve: approve, Reason: d.Reason}
		rep, ok := a.propose(w, r, fsm.TypeTaskDecide, args)
		if !ok {
			return
		}
		verb := map[bool]string{true: "approved", false: "denied"}[approve]
		a.log.Info("held task "+verb, "task", id, "operator", Operator(r), "reason", d.Reason)
		// The task as this node holds it once it applied the decision
		// (the reply waits for that, fsm.RepliedOnApply): an approved
		// task is routed in the same entry, after the decision made its
		// result. The result is the fallback.
		tr, ok := rep.Result.(*fsm.TaskResult)
		if !ok {
			adminErr(w, http.StatusInternalServerError, "internal", "the decision answered no task")
			return
		}
		k := &tr.Task
		if now, found, err := a.readTaskOrGraph(id); err == nil && found && now.Task != nil &&
			now.Task.Updated >= k.Updated && len(now.Task.History) >= len(k.History) {
			k = now.Task
		}
		adminJSON(w, http.StatusOK, AdminTaskGet{Task: k})
	}
}

// cancelTask answers POST /v1/tasks/{id}/cancel: the operator cancels a
// task or a graph, whoever submitted it.
func (a *Admin) cancelTask(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	d, ok := decodeDecision(w, r)
	if !ok {
		return
	}
	rep, ok := a.propose(w, r, fsm.TypeTaskCancel, &task.CancelArgs{Task: id, Operator: Operator(r), Reason: d.Reason})
	if !ok {
		return
	}
	n := 0
	if cr, ok := rep.Result.(*fsm.CancelResult); ok {
		n = cr.Cancelled
	}
	a.log.Info("tasks cancelled", "task", id, "cancelled", n, "operator", Operator(r))
	adminJSON(w, http.StatusOK, map[string]any{"task": id, "cancelled": n})
}

// setSensitive answers PUT and DELETE /v1/capabilities/{name}/sensitive:
// tasks of a sensitive capability wait for an operator's approval once
// their dependencies succeeded (tasks already ready or running are not
// affected).
func (a *Admin) setSensitive(on bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if !route.ValidCapName(name) {
			adminErr(w, http.StatusBadRequest, "bad_request", "%q is not a capability name: dot-separated parts of [A-Za-z0-9_-]", name)
			return
		}
		if _, ok := a.propose(w, r, fsm.TypeCapSensitive, &fsm.CapSensitiveArgs{Cap: name, Operator: Operator(r), On: on}); !ok {
			return
		}
		a.log.Info("capability sensitivity changed", "capability", name, "sensitive", on, "operator", Operator(r))
		adminJSON(w, http.StatusOK, AdminSensitive{Capability: name, Sensitive: on, Operator: Operator(r)})
	}
}

// listSensitive answers the capabilities marked sensitive, each with the
// operator who marked it.
func (a *Admin) listSensitive(w http.ResponseWriter, r *http.Request) {
	var caps map[string]string
	if err := a.node.Read(func(tx *bolt.Tx) error {
		caps = task.SensitiveCaps(tx)
		return nil
	}); err != nil {
		adminFail(w, err)
		return
	}
	adminJSON(w, http.StatusOK, caps)
}
