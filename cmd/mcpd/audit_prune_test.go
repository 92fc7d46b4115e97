package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/testcluster"
	bolt "go.etcd.io/bbolt"
)

// mcpd audit prune on a running node: refused before a checkpoint covers
// what would stay; then the entries up to --through go, the node's log
// verifies from there (online and on the node), and later entries
// follow.
func TestCLIAuditPrune(t *testing.T) {
	n := startCLINode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	alice := n.c.Dial("alice")
	for range 5 {
		if _, err := alice.Enqueue(ctx, "jobs", "x"); err != nil {
			t.Fatal(err)
		}
	}
	node := n.c.Nodes[0].Node
	testcluster.WaitFor(t, 10*time.Second, func() bool { return node.MembersApply(fsm.TypeAuditPrune) == nil })
	head, err := node.FSM().AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	through := head.Seq - 1
	if _, err := run(t, auditPrune, n.asOperator("--through", seqArg(through))); !isAdminCode(err, "conflict") {
		t.Fatalf("without a checkpoint: %v", err)
	}
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize))
	c := audit.Sign(key, head)
	rep, err := node.Call(ctx, fsm.TypeAuditCheckpoint, "", fsm.AuditCheckpointOf(c))
	if err != nil || rep.Err != nil {
		t.Fatalf("checkpoint: %v %v", err, rep)
	}

	out := mustRun(t, auditPrune, n.asOperator("--through", seqArg(through)))
	if want := "audit log pruned: " + seqArg(through) + " removed; it now starts after seq " + seqArg(through); !strings.Contains(out, want) {
		t.Fatalf("prune printed %q, want %q", out, want)
	}
	if _, err := alice.Enqueue(ctx, "jobs", "after"); err != nil {
		t.Fatal(err)
	}
	out = mustRun(t, auditVerify, n.asOperator("--node"))
	if !strings.Contains(out, "entries up to "+seqArg(through)+" were pruned; the checkpoints cover the base") {
		t.Fatalf("online verify: %s", out)
	}
	if err := node.FSM().View(func(tx *bolt.Tx) error {
		r, err := audit.Verify(tx, key.Public().(ed25519.PublicKey))
		if err == nil && (!r.OK || r.Pruned != through || r.Checkpoints != 1) {
			err = errors.New(r.String())
		}
		return err
	}); err != nil {
		t.Fatalf("the node's log: %v", err)
	}
	// Pruning again up to the same seq removes nothing.
	if out := mustRun(t, auditPrune, n.asOperator("--through", seqArg(through))); !strings.Contains(out, "0 removed") {
		t.Fatalf("again: %s", out)
	}
	var ue *usageError
	for _, args := range [][]string{{}, {"--through", "0"}, {"--through", "3", "extra"}} {
		if _, err := run(t, auditPrune, n.asOperator(args...)); !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}

func seqArg(seq uint64) string { return strconv.FormatUint(seq, 10) }
