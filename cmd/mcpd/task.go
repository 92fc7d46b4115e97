package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/transport"
)

// runTask handles "mcpd task ...": submit, get, watch and cancel as an
// agent over WebSocket; list, approve, deny and show as the operator over
// the admin API (docs/delegation-cli.md).
func runTask(args []string) error {
	if len(args) == 0 {
		return &usageError{"expected 'mcpd task submit|get|watch|cancel|list|approve|deny|show|verify ...'"}
	}
	rest := args[1:]
	switch args[0] {
	case "-h", "-help", "--help", "help":
		return groupUsage(taskHelp)
	case "submit":
		return taskSubmit(rest, os.Stdout)
	case "get":
		return taskGet(rest, os.Stdout)
	case "watch":
		return taskWatch(rest, os.Stdout)
	case "cancel":
		return taskCancel(rest, os.Stdout)
	case "list":
		return taskList(rest, os.Stdout)
	case "approve":
		return taskApprove(rest, os.Stdout)
	case "deny":
		return taskDeny(rest, os.Stdout)
	case "show":
		return taskShow(rest, os.Stdout)
	case "verify":
		return taskVerify(rest, os.Stdout)
	}
	return &usageError{fmt.Sprintf("unknown task command %q: submit, get, watch, cancel, list, approve, deny, show or verify", args[0])}
}

// parseOne parses flags that may come before or after one positional
// argument, what it is named in messages.
func parseOne(fs *flag.FlagSet, args []string, what string) (string, error) {
	// "-" (standard input) is an argument, not a flag.
	if len(args) > 0 && (args[0] == "-" || !strings.HasPrefix(args[0], "-")) {
		v := args[0]
		if err := fs.Parse(args[1:]); err != nil {
			return "", err
		}
		if fs.NArg() > 0 {
			return "", &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
		}
		return v, nil
	}
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() != 1 {
		return "", &usageError{"expected one " + what}
	}
	return fs.Arg(0), nil
}

// submitFile is the file "mcpd task submit" reads. Inputs are plain JSON
// bodies; the CLI wraps each in an envelope signed as the agent.
type submitFile struct {
	Intent string         `json:"intent"`
	Parent string         `json:"parent"`
	Tasks  []submitFileTS `json:"tasks"`
}

type submitFileTS struct {
	Ref         string          `json:"ref"`
	Capability  string          `json:"capability"`
	Input       json.RawMessage `json:"input"`
	Deps        []string        `json:"deps"`
	MaxAttempts int             `json:"max_attempts"`
	TimeoutMs   int64           `json:"timeout_ms"`
	Approval    bool            `json:"approval"`
}

func readSubmitFile(path string) (*submitFile, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(os.Stdin)
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	var f submitFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, &usageError{fmt.Sprintf("%s: %v (want {\"intent\":..., \"parent\":..., \"tasks\":[{\"ref\":..., \"capability\":..., \"input\":..., \"deps\":[...]}]})", path, err)}
	}
	if len(f.Tasks) == 0 {
		return nil, &usageError{path + ": no tasks"}
	}
	for i, t := range f.Tasks {
		if t.Ref == "" || t.Capability == "" {
			return nil, &usageError{fmt.Sprintf("%s: tasks[%d] needs a ref and a capability", path, i)}
		}
	}
	return &f, nil
}

const taskSubmitUsage = "usage: mcpd task submit FILE.json|- [--json] [--server URL[,URL]] [--ca FILE] [--cred FILE | --agent NAME]"

func taskSubmit(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("task submit", flag.ContinueOnError)
	var cf connFlags
	cf.register(fs, "cli", 30*time.Second, "how long to wait for the answer")
	asJSON := fs.Bool("json", false, "print {\"root\":..., \"ids\":{...}} as JSON")
	setUsage(fs, taskSubmitUsage)
	path, err := parseOne(fs, args, "FILE (- for standard input)")
	if err != nil {
		return err
	}
	f, err := readSubmitFile(path)
	if err != nil {
		return err
	}
	req := client.SubmitRequest{Intent: f.Intent, Parent: f.Parent}
	for _, t := range f.Tasks {
		input := t.Input
		if input == nil {
			input = json.RawMessage("null")
		}
		req.Tasks = append(req.Tasks, client.TaskSpec{Ref: t.Ref, Capability: t.Capability, Input: input,
			Deps: t.Deps, MaxAttempts: t.MaxAttempts, TimeoutMs: t.TimeoutMs, Approval: t.Approval})
	}
	return withClient(&cf, func(ctx context.Context, c *client.Client) error {
		ids, root, err := c.SubmitTasks(ctx, req)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, map[string]any{"root": root, "ids": ids})
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "root\t%s\n", root)
		for _, t := range f.Tasks {
			fmt.Fprintf(tw, "%s\t%s\n", t.Ref, ids[t.Ref])
		}
		return tw.Flush()
	})
}

const taskGetUsage = "usage: mcpd task get ID [--json] [--server URL[,URL]] [--ca FILE] [--cred FILE | --agent NAME]"

func taskGet(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("task get", flag.ContinueOnError)
	var cf connFlags
	cf.register(fs, "cli", 30*time.Second, "how long to wait for the answer")
	asJSON := fs.Bool("json", false, "print the task (or the graph's tasks) as JSON, history and provenance included")
	setUsage(fs, taskGetUsage)
	id, err := parseOne(fs, args, "task or graph ID")
	if err != nil {
		return err
	}
	return withClient(&cf, func(ctx context.Context, c *client.Client) error {
		g, err := c.GetTask(ctx, id)
		if err != nil {
			return err
		}
		return printTaskGet(stdout, g, *asJSON)
	})
}

// printTaskGet prints a task with its history, or a graph's tasks.
func printTaskGet(w io.Writer, g *client.TaskGet, asJSON bool) error {
	if asJSON {
		if g.Task != nil {
			return printJSON(w, map[string]any{"task": g.Task})
		}
		return printJSON(w, map[string]any{"graph": g.Graph, "tasks": g.Tasks})
	}
	if g.Task == nil {
		fmt.Fprintf(w, "graph %s: %s\n", g.Graph, tally(g.Tasks))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tREF\tCAPABILITY\tSTATE\tATTEMPT\tAGENT\tDEPS\tUPDATED")
		for _, k := range g.Tasks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\n", k.ID, k.Ref, k.Capability, k.State, k.Attempt, k.MaxAttempts,
				dash(k.Agent), dash(strings.Join(k.Deps, ",")), msClock(k.Updated))
		}
		return tw.Flush()
	}
	k := g.Task
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "task\t%s (ref %s, graph %s)\n", k.ID, k.Ref, k.Graph)
	fmt.Fprintf(tw, "capability\t%s\n", k.Capability)
	state := k.State
	if k.Attempt > 0 {
		state += fmt.Sprintf(" (attempt %d of %d", k.Attempt, k.MaxAttempts)
		if k.Agent != "" {
			state += ", agent " + k.Agent
		}
		state += ")"
	}
	fmt.Fprintf(tw, "state\t%s\n", state)
	if k.Parent != "" {
		fmt.Fprintf(tw, "parent\t%s\n", k.Parent)
	}
	if len(k.Deps) > 0 {
		fmt.Fprintf(tw, "deps\t%s\n", strings.Join(k.Deps, ", "))
	}
	fmt.Fprintf(tw, "origin\t%s\n", k.Origin)
	fmt.Fprintf(tw, "chain\t%s\n", strings.Join(k.Chain, " -> "))
	if k.Intent != "" {
		fmt.Fprintf(tw, "intent\t%s\n", k.Intent)
	}
	if len(k.Output) > 0 {
		fmt.Fprintf(tw, "output\t%s\n", compactJSON(k.Output))
	}
	if k.Error != "" {
		fmt.Fprintf(tw, "error\t%s\n", k.Error)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tEVENT\tAGENT\tATTEMPT\tDETAIL")
	for _, e := range k.History {
		attempt := "-"
		if e.Attempt > 0 {
			attempt = fmt.Sprint(e.Attempt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", msClock(e.At), e.Event, dash(e.Agent), attempt, e.Detail)
	}
	return tw.Flush()
}

// tally counts tasks by state: "3 tasks: 2 succeeded, 1 assigned".
func tally(tasks []*client.Task) string {
	order := []string{client.TaskSucceeded, client.TaskFailed, client.TaskCancelled, client.TaskAssigned,
		client.TaskReady, client.TaskHeld, client.TaskWaiting}
	n := map[string]int{}
	for _, k := range tasks {
		n[k.State]++
	}
	var parts []string
	for _, s := range order {
		if n[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[s], s))
		}
	}
	return fmt.Sprintf("%d tasks: %s", len(tasks), strings.Join(parts, ", "))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// msClock formats unix ms as UTC time with milliseconds.
func msClock(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z")
}

// compactJSON shortens a JSON value for one line of a table.
func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		b.Reset()
		b.Write(raw)
	}
	s := b.String()
	if len(s) > 200 {
		s = s[:197] + "..."
	}
	return s
}

const taskWatchUsage = "usage: mcpd task watch ID [--json] [--timeout DUR] [--server URL[,URL]] [--ca FILE] [--cred FILE | --agent NAME]"

// taskWatch prints the state of a task or graph and every change of it
// (and of what is delegated under it) until every task seen has ended.
// It fails when one of them did not succeed.
func taskWatch(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("task watch", flag.ContinueOnError)
	var cf connFlags
	cf.register(fs, "cli", 0, "stop watching after this long")
	asJSON := fs.Bool("json", false, "print each update as one JSON object per line")
	setUsage(fs, taskWatchUsage)
	id, err := parseOne(fs, args, "task or graph ID")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	wctx, cancel := cf.withTimeout(ctx)
	defer cancel()
	w, err := c.WatchTasks(wctx, id)
	if err != nil {
		return fmt.Errorf("%w%s", err, delegationHint(err, cf.cred != ""))
	}
	// The tasks the watch must see end: the task, or every task of the
	// graph (read after the watch opened, so that no change is missed),
	// and whatever is delegated under them as it appears.
	g, err := c.GetTask(wctx, id)
	if err != nil {
		return fmt.Errorf("%w%s", err, delegationHint(err, cf.cred != ""))
	}
	last := map[string]*client.Task{}
	var order []string
	for _, k := range append(g.Tasks, g.Task) {
		if k != nil {
			order = append(order, k.ID)
		}
	}
	for {
		u, err := w.Next(wctx)
		switch {
		case ctx.Err() != nil:
			return nil // interrupted
		case errors.Is(err, context.DeadlineExceeded):
			return fmt.Errorf("%s has not ended within --timeout %v", id, cf.timeout)
		case err != nil:
			return fmt.Errorf("watching %s: %w", id, err)
		}
		k := u.Task
		if prev := last[k.ID]; prev != nil && client.TaskFinal(prev.State) && !client.TaskFinal(k.State) {
			continue // an end state is the last word
		}
		if !slices.Contains(order, k.ID) {
			order = append(order, k.ID)
		}
		last[k.ID] = k
		if *asJSON {
			if err := printJSON(stdout, k); err != nil {
				return err
			}
		} else {
			line := fmt.Sprintf("%s  %s  %s  %s  %s", msClock(k.Updated), k.ID, k.Ref, k.Capability, k.State)
			if k.Agent != "" && k.Attempt > 0 {
				line += fmt.Sprintf("  agent=%s attempt=%d", k.Agent, k.Attempt)
			}
			if k.State == client.TaskSucceeded && len(k.Output) > 0 {
				line += "  output=" + compactJSON(k.Output)
			}
			if k.Error != "" && k.State != client.TaskSucceeded {
				line += "  error=" + k.Error
			}
			fmt.Fprintln(stdout, line)
		}
		ended, bad := 0, 0
		for _, tid := range order {
			if last[tid] == nil {
				continue
			}
			if s := last[tid].State; client.TaskFinal(s) {
				ended++
				if s != client.TaskSucceeded {
					bad++
				}
			}
		}
		if ended < len(order) {
			continue
		}
		all := make([]*client.Task, 0, len(order))
		for _, tid := range order {
			all = append(all, last[tid])
		}
		if bad > 0 {
			return fmt.Errorf("%s ended: %s", id, tally(all))
		}
		if !*asJSON {
			fmt.Fprintf(stdout, "%s ended: %s\n", id, tally(all))
		}
		return nil
	}
}

const taskCancelUsage = "usage: mcpd task cancel ID [--reason TEXT] [--server URL[,URL]] [--ca FILE] [--cred FILE | --agent NAME]"

func taskCancel(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("task cancel", flag.ContinueOnError)
	var cf connFlags
	cf.register(fs, "cli", 30*time.Second, "how long to wait for the answer")
	reason := fs.String("reason", "", "why, recorded in the history of every task it ends")
	setUsage(fs, taskCancelUsage)
	id, err := parseOne(fs, args, "task or graph ID")
	if err != nil {
		return err
	}
	return withClient(&cf, func(ctx context.Context, c *client.Client) error {
		n, err := c.CancelTask(ctx, id, *reason)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %d task(s) cancelled\n", id, n)
		return nil
	})
}

// adminTaskGet is GET /v1/tasks/{id} as the CLI reads it.
type adminTaskGet struct {
	Task  *client.Task   `json:"task"`
	Graph string         `json:"graph"`
	Tasks []*client.Task `json:"tasks"`
}

func (g *adminTaskGet) get() *client.TaskGet {
	return &client.TaskGet{Task: g.Task, Graph: g.Graph, Tasks: g.Tasks}
}

func taskApprove(args []string, stdout io.Writer) error { return taskDecide(true, args, stdout) }
func taskDeny(args []string, stdout io.Writer) error    { return taskDecide(false, args, stdout) }

// taskDecide handles "mcpd task approve|deny ID": the operator's
// decision on a held task, in the name the admin API gives the operator.
func taskDecide(approve bool, args []string, stdout io.Writer) error {
	verb := map[bool]string{true: "approve", false: "deny"}[approve]
	fs := flag.NewFlagSet("task "+verb, flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	help := "why (optional), recorded in the task's history and the audit log"
	if !approve {
		help = "why (required): the task is cancelled with it, and its dependents"
	}
	reason := fs.String("reason", "", help)
	setUsage(fs, "usage: mcpd task "+verb+" ID [--reason TEXT] [--data-dir DIR | --admin-socket PATH | --admin-url URL --admin-token-file FILE]")
	id, err := parseOne(fs, args, "task ID")
	if err != nil {
		return err
	}
	if !approve && strings.TrimSpace(*reason) == "" {
		return &usageError{"task deny needs --reason TEXT"}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var res adminTaskGet
	err = c.do("POST", "/v1/tasks/"+url.PathEscape(id)+"/"+verb, transport.AdminDecision{Reason: *reason}, &res)
	if isAdminCode(err, "conflict") {
		return fmt.Errorf("%w\nhint: only a held task can be approved or denied ('mcpd task show %s')", err, id)
	}
	if err != nil {
		return err
	}
	if res.Task == nil {
		return fmt.Errorf("the node answered without the task")
	}
	fmt.Fprintf(stdout, "task %s %s; it is now %s\n", id, map[bool]string{true: "approved", false: "denied"}[approve], res.Task.State)
	return nil
}

// adminTaskList is GET /v1/tasks as the CLI reads it.
type adminTaskList struct {
	Tasks []struct {
		client.Task
		Submitter string `json:"submitter"`
	} `json:"tasks"`
	Next   string           `json:"next"`
	Counts map[string]int64 `json:"counts"`
}

const taskListUsage = "usage: mcpd task list [--state S ...] [--capability C] [--graph ID] [--roots] [--limit N] [--before ID] [--json] [--data-dir DIR | --admin-socket PATH | --admin-url URL --admin-token-file FILE]"

// taskList handles "mcpd task list": a page of the tasks the node
// holds, newest first, through the admin API (GET /v1/tasks).
func taskList(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("task list", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	var states stringList
	fs.Var(&states, "state", "only tasks in this state (repeat it, or S1,S2): waiting, held, ready, assigned, succeeded, failed, cancelled")
	capName := fs.String("capability", "", "only tasks of this capability")
	graph := fs.String("graph", "", "only the tasks submitted in this graph (a submit's root, e.g. g1)")
	roots := fs.Bool("roots", false, "one row per graph an agent submitted on its own (not delegated): its first task")
	limit := fs.Int("limit", 100, "at most N tasks (1 to 1000)")
	before := fs.String("before", "", "only tasks older than this task id (the cursor the previous page printed)")
	asJSON := fs.Bool("json", false, "print the admin API's answer: {\"tasks\":[...], \"next\":..., \"counts\":{...}}")
	setUsage(fs, taskListUsage)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	q := url.Values{}
	for _, s := range states {
		q.Add("state", s)
	}
	for k, v := range map[string]string{"capability": *capName, "graph": *graph, "before": *before} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if *roots {
		q.Set("roots", "1")
	}
	q.Set("limit", strconv.Itoa(*limit))
	c, err := af.client()
	if err != nil {
		return err
	}
	raw, err := c.doRaw("GET", "/v1/tasks?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	if *asJSON {
		var b bytes.Buffer
		if err := json.Compact(&b, raw); err != nil {
			return err
		}
		err := printRawJSON(stdout, b.Bytes())
		return err
	}
	var res adminTaskList
	if err := json.Unmarshal(raw, &res); err != nil {
		return err
	}
	now := time.Now()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tGRAPH\tCAPABILITY\tSTATE\tAGENT\tATTEMPTS\tAGE")
	for _, k := range res.Tasks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", k.ID, k.Graph, k.Capability, k.State, dash(k.Agent),
			k.Attempt, k.MaxAttempts, age(now, k.Created))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if res.Next != "" {
		fmt.Fprintf(stdout, "more: mcpd task list ... --before %s\n", res.Next)
	}
	var parts []string
	for _, s := range []string{client.TaskWaiting, client.TaskHeld, client.TaskReady, client.TaskAssigned,
		client.TaskSucceeded, client.TaskFailed, client.TaskCancelled} {
		if n := res.Counts[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, s))
		}
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	fmt.Fprintf(stdout, "all tasks: %s\n", strings.Join(parts, ", "))
	return nil
}

// age is how long before now ms was, in its largest unit: 45s, 12m,
// 3h, 9d.
func age(now time.Time, ms int64) string {
	if ms == 0 {
		return "-"
	}
	d := max(now.Sub(time.UnixMilli(ms)), 0)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

// taskShow handles "mcpd task show ID": task get through the admin API,
// for an operator without an agent identity.
func taskShow(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("task show", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print the task (or the graph's tasks) as JSON")
	setUsage(fs, "usage: mcpd task show ID [--json] [--data-dir DIR | --admin-socket PATH | --admin-url URL --admin-token-file FILE]")
	id, err := parseOne(fs, args, "task or graph ID")
	if err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var res adminTaskGet
	if err := c.do("GET", "/v1/tasks/"+url.PathEscape(id), nil, &res); err != nil {
		return err
	}
	return printTaskGet(stdout, res.get(), *asJSON)
}

const taskVerifyUsage = "usage: mcpd task verify ID [--server URL[,URL]] [--ca FILE] [--cred FILE | --agent NAME]"

// taskVerify checks a task's delegation chain hop by hop against the
// agents' registered keys (client.VerifyTaskChain) and prints the verdict
// of each hop; it fails when the chain does not hold.
func taskVerify(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("task verify", flag.ContinueOnError)
	var cf connFlags
	cf.register(fs, "cli", 30*time.Second, "how long to wait for the answers")
	setUsage(fs, taskVerifyUsage)
	id, err := parseOne(fs, args, "task ID")
	if err != nil {
		return err
	}
	return withClient(&cf, func(ctx context.Context, c *client.Client) error {
		g, err := c.GetTask(ctx, id)
		if err != nil {
			return err
		}
		if g.Task == nil {
			return &usageError{id + " is a graph: verify one of its tasks"}
		}
		checks, err := c.VerifyTaskChain(ctx, g.Task)
		if checks == nil && err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "HOP\tAGENT\tTASK\tSIGNATURE")
		for i, h := range checks {
			verdict := "ed25519, verified"
			switch {
			case h.Err != nil:
				verdict = "NOT VERIFIED: " + h.Err.Error()
			case h.Verified.ByServer:
				verdict = "hmac-sha256, checked by the cluster"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", i, h.Hop.Agent, h.Hop.Task, verdict)
		}
		if ferr := tw.Flush(); ferr != nil {
			return ferr
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "chain of %s verified: %s\n", g.Task.ID, strings.Join(g.Task.Chain, " -> "))
		return nil
	})
}
