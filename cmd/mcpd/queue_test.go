package main

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/transport"
)

// mcpd queue redrive and delete, through the admin socket: dead letters
// go back to their queue, messages are deleted, a leased one only with
// --force.
func TestCLIQueueRedriveDelete(t *testing.T) {
	n := startCLINode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl := n.c.Dial("alice")
	if _, err := cl.DeclareQueue(ctx, "jobs", client.QueueSettings{MaxAttempts: 1}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := cl.Enqueue(ctx, "jobs", map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	k, err := cl.Consume(ctx, "jobs", client.ConsumeOptions{Prefetch: 3, LeaseMs: 60_000})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		d, err := k.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Reject(ctx, "unparseable"); err != nil {
			t.Fatal(err)
		}
	}
	if err := k.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, queueCmd, n.asOperator("peek", "jobs.dlq"))
	if strings.Count(out, "rejected: unparseable") != 3 {
		t.Fatalf("queue peek jobs.dlq:\n%s", out)
	}
	// With --timeline, each message's events follow its row.
	out = mustRun(t, queueCmd, n.asOperator("peek", "jobs.dlq", "--timeline"))
	tl := regexp.MustCompile(`(?m)^1 +ready .*\n +\S+Z +enqueued +alice *\n +\S+Z +delivered +attempt 1 +n1/\S+ \(consumer \d+\) *\n` +
		` +\S+Z +rejected +attempt 1 +n1/\S+ +unparseable\n +\S+Z +dead +attempt 1 +rejected: unparseable\n2 +ready `)
	if !tl.MatchString(out) || strings.Count(out, "rejected: unparseable") != 6 {
		t.Fatalf("queue peek jobs.dlq --timeline:\n%s", out)
	}

	// Mistakes on the command line.
	for _, args := range [][]string{
		{"redrive", "jobs.dlq"},
		{"redrive", "jobs.dlq", "--all", "--seq", "1"},
		{"redrive", "jobs.dlq", "--seq", "1", "--limit", "2"},
		{"redrive", "--seq", "1"},
		{"delete", "jobs"},
		{"delete", "jobs", "abc"},
		{"delete", "jobs", "0"},
	} {
		var ue *usageError
		if _, err := run(t, queueCmd, n.asOperator(args...)); !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	if _, err := run(t, queueCmd, n.asOperator("redrive", "jobs.dlq", "--seq", "x")); err == nil {
		t.Error("--seq x accepted")
	}

	// Refusals of the node: nothing moves.
	if _, err := run(t, queueCmd, n.asOperator("redrive", "jobs.dlq", "--seq", "1,99")); !isAdminCode(err, "not_found") {
		t.Fatalf("redrive of an unknown seq: %v", err)
	}
	if _, err := run(t, queueCmd, n.asOperator("redrive", "jobs", "--seq", "1")); !isAdminCode(err, "not_found") {
		t.Fatalf("redrive of a message that is gone: %v", err)
	}
	if _, err := run(t, queueCmd, n.asOperator("redrive", "jobs.dlq", "--all", "--to", "nosuch")); !isAdminCode(err, "not_found") {
		t.Fatalf("redrive to an unknown queue: %v", err)
	}

	// By seq (flags before the name too), then the rest.
	out = mustRun(t, queueCmd, n.asOperator("redrive", "--seq", "2", "jobs.dlq"))
	if !strings.HasPrefix(out, "moved 1 dead letter of jobs.dlq\n") || !regexp.MustCompile(`(?m)^jobs\.dlq/2\s+jobs/4$`).MatchString(out) {
		t.Fatalf("queue redrive --seq:\n%s", out)
	}
	var res transport.AdminRedrive
	if err := json.Unmarshal([]byte(mustRun(t, queueCmd, n.asOperator("redrive", "jobs.dlq", "--all", "--json"))), &res); err != nil ||
		res.Moved != 2 || len(res.Seqs) != 2 || res.Seqs[0] != 5 || res.Messages[1].From != 3 {
		t.Fatalf("queue redrive --all --json: %+v %v", res, err)
	}
	if out := mustRun(t, queueCmd, n.asOperator("redrive", "jobs.dlq", "--all")); out != "moved 0 dead letters of jobs.dlq\n" {
		t.Fatalf("redrive of an empty DLQ: %q", out)
	}
	out = mustRun(t, queueCmd, n.asOperator("peek", "jobs"))
	if !regexp.MustCompile(`(?m)^4\s+ready\s+0\s+\S+\s+-\s+-\s+\{`).MatchString(out) || strings.Count(out, "ready") != 3 {
		t.Fatalf("queue peek jobs after the redrive:\n%s", out)
	}

	// Delete a waiting message, then a leased one.
	if out := mustRun(t, queueCmd, n.asOperator("delete", "jobs", "4")); out != "deleted jobs/4 (ready, 0 attempts)\n" {
		t.Fatalf("queue delete: %q", out)
	}
	if _, err := run(t, queueCmd, n.asOperator("delete", "jobs", "4")); !isAdminCode(err, "not_found") {
		t.Fatalf("second delete: %v", err)
	}
	k, err = cl.Consume(ctx, "jobs", client.ConsumeOptions{Prefetch: 1, LeaseMs: 60_000})
	if err != nil {
		t.Fatal(err)
	}
	d, err := k.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seq := []string{"delete", "jobs", strconv.FormatUint(d.Seq, 10)}
	// The lease's end as a time, and one line of advice that names --force.
	_, err = run(t, queueCmd, n.asOperator(seq...))
	if !isAdminCode(err, "conflict") ||
		!regexp.MustCompile(`^conflict: jobs/\d+ is leased to n1/\S+ until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in \S+\)\n[^\n]*--force[^\n]*$`).MatchString(err.Error()) ||
		strings.Count(err.Error(), "force") != 1 {
		t.Fatalf("delete of a leased message: %v", err)
	}
	out = mustRun(t, queueCmd, n.asOperator(append(seq, "--force")...))
	if !regexp.MustCompile(`^deleted jobs/\d+ \(inflight, 1 attempt, its lease by n1/\S+ ended\)\n$`).MatchString(out) {
		t.Fatalf("queue delete --force: %q", out)
	}
	if err := d.Ack(ctx); err == nil {
		t.Fatal("the ack of a deleted message succeeded")
	}
}

// A reason or name with line breaks or tabs stays one table cell, so
// --timeline keeps each message's events under its own row.
func TestOneLine(t *testing.T) {
	if got := oneLine("bad\ninput\r\nat\tline 3\r"); got != "bad input at line 3 " {
		t.Fatalf("oneLine = %q", got)
	}
}

// The node's answer about a leased message gets its lease end as a time;
// anything else is left alone.
func TestLeaseConflict(t *testing.T) {
	now := time.UnixMilli(1796028728607)
	conflict := func(msg string) error { return &adminError{code: "conflict", msg: msg} }
	head, tail, ok := leaseConflict(conflict("jobs/3 is leased to n1/ab/1 until 1796028788607: wait for it to be settled or its lease to end, or force the delete"), now)
	if !ok || head != "jobs/3 is leased to n1/ab/1 until "+msTime(1796028788607)+" (in 1m0s)" ||
		tail != ": wait for it to be settled or its lease to end, or force the delete" {
		t.Fatalf("delete's conflict: %q %q %v", head, tail, ok)
	}
	head, tail, ok = leaseConflict(conflict("jobs.dlq/2 is leased to n1/ab/1 until 1796028788607: redrive it when its lease ends, or delete it"), now.Add(time.Hour))
	if !ok || head != "jobs.dlq/2 is leased to n1/ab/1 until "+msTime(1796028788607) || tail != ": redrive it when its lease ends, or delete it" {
		t.Fatalf("redrive's conflict, the lease over: %q %q %v", head, tail, ok)
	}
	for _, err := range []error{
		conflict("jobs/3 is leased to n1/ab/1 until 17960: wait"),
		conflict("jobs/3 is leased to n1/ab/1 until soon: wait"),
		conflict("something else"),
		&adminError{code: "not_found", msg: "jobs/3 is leased to n1/ab/1 until 1796028788607: wait"},
		errors.New("jobs/3 is leased to n1/ab/1 until 1796028788607: wait"),
	} {
		if _, _, ok := leaseConflict(err, now); ok {
			t.Errorf("%v recognised", err)
		}
	}
}
