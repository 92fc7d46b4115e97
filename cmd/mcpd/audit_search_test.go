package main

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/client"
)

// mcpd audit search, through the admin socket: a message's settles by
// its QUEUE/SEQ, filters by actor, kind and time, newest first, JSON
// lines, --limit across pages, and bad filters.
func TestCLIAuditSearch(t *testing.T) {
	n := startCLINode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	alice, bob := n.c.Dial("alice"), n.c.Dial("bob")
	first, err := alice.Enqueue(ctx, "jobs", "one")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := bob.Consume(ctx, "jobs", client.ConsumeOptions{Prefetch: 1, LeaseMs: 60000})
	if err != nil {
		t.Fatal(err)
	}
	next := func() *client.Delivery {
		t.Helper()
		d, err := cons.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if err := next().Nack(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if d := next(); d.Seq != first.Seq || d.Ack(ctx) != nil {
		t.Fatalf("redelivery: seq %d, want %d", d.Seq, first.Seq)
	}
	if _, err := alice.Enqueue(ctx, "jobs", "two"); err != nil {
		t.Fatal(err)
	}
	if err := next().Reject(ctx, "unparseable"); err != nil {
		t.Fatal(err)
	}
	search := func(args ...string) string { return mustRun(t, auditSearch, n.asOperator(args...)) }

	// The table: the message's nack then its ack.
	out := search("--id", "jobs/1")
	rows := strings.Split(strings.TrimSpace(out), "\n")
	if len(rows) != 3 || !regexp.MustCompile(`^SEQ\s+TIME\s+TYPE\s+ACTOR\s+SUBJECT\s+RESULT$`).MatchString(rows[0]) ||
		!regexp.MustCompile(`^\d+\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\s+nack\s+bob\s+jobs/1\s+ok$`).MatchString(rows[1]) ||
		!regexp.MustCompile(`^\d+\s+\S+\s+ack\s+bob\s+jobs/1\s+ok$`).MatchString(rows[2]) {
		t.Fatalf("search --id jobs/1:\n%s", out)
	}

	// JSON lines, newest first, the seq given with --queue.
	out = search("--queue", "jobs", "--id", "1", "--desc", "--json")
	var kinds []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil || r.ComputeHash() != r.Hash {
			t.Fatalf("line %q: %v", line, err)
		}
		kinds = append(kinds, r.Kind)
	}
	if !slices.Equal(kinds, []string{"ack", "nack"}) {
		t.Fatalf("--desc --json: %v\n%s", kinds, out)
	}

	if out := search("--queue", "jobs", "--actor", "alice", "--type", "enqueue"); strings.Count(out, "enqueue") != 2 || strings.Count(out, "\n") != 3 {
		t.Fatalf("alice's enqueues:\n%s", out)
	}
	if out := search("--type", "reject", "--type", "nack", "--since", "1h"); !regexp.MustCompile(`(?s)nack\s+bob\s+jobs/1.*reject\s+bob\s+jobs/2`).MatchString(out) {
		t.Fatalf("rejects and nacks of the last hour:\n%s", out)
	}
	if out := search("--until", "2000-01-01T00:00:00Z"); strings.Count(out, "\n") != 1 {
		t.Fatalf("before 2000:\n%s", out)
	}
	if out := search("--grep", "JOBS/2"); !strings.Contains(out, "reject") || strings.Count(out, "\n") != 2 {
		t.Fatalf("--grep:\n%s", out)
	}

	// --limit counts entries across the node's pages.
	if out := search("--queue", "jobs", "--limit", "2", "--desc"); strings.Count(out, "\n") != 3 || !strings.Contains(out, "reject") {
		t.Fatalf("--limit 2:\n%s", out)
	}
	if out := search("--queue", "jobs", "--limit", "0"); strings.Count(out, "\n") != 7 {
		t.Fatalf("--limit 0 (enqueue, consume, nack, ack, enqueue, reject):\n%s", out)
	}

	var ue *usageError
	for _, args := range [][]string{{"--since", "yesterday"}, {"--until", "-5m"}, {"--limit", "-1"}, {"extra"}} {
		if _, err := run(t, auditSearch, n.asOperator(args...)); !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	if _, err := run(t, auditSearch, n.asOperator("--queue", "no/such")); !isAdminCode(err, "bad_request") {
		t.Errorf("a bad queue name: %v", err)
	}
}
