package transport_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/testcluster"
	"github.com/mcpd/mcpd/transport"
)

// POST /v1/audit/prune sent to a follower of a 3-node cluster: refused
// (and nothing changes) for bad input and for a seq not before the
// latest checkpoint; then the start of the log goes from every node, and
// GET /v1/audit/verify on each says the chain is whole from its base.
func TestAdminAuditPrune(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := c.Dial("writer")
	for i := range 20 {
		if _, err := w.Enqueue(ctx, "jobs", i); err != nil {
			t.Fatal(err)
		}
	}
	admins := map[string]*adminAPI{}
	for _, nd := range c.Nodes {
		admins[nd.ID] = serveAdmin(t, transport.NewAdmin(nd.Node, nil, slog.New(slog.DiscardHandler)).LocalHandler())
	}
	via := admins[c.Followers()[0].ID]

	leader := c.WaitLeader()
	// Every node has announced a command level that applies the prune.
	testcluster.WaitFor(t, 10*time.Second, func() bool { return leader.Node.MembersApply(fsm.TypeAuditPrune) == nil })
	head, err := leader.Node.FSM().AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	through := head.Seq - 2
	for _, body := range []string{`{}`, `{"through":0}`, `{"through":"5"}`, `{"through":5,"extra":1}`, `[`} {
		via.want(400, "POST", "/v1/audit/prune", body, "")
	}
	out := via.want(409, "POST", "/v1/audit/prune", fmt.Sprintf(`{"through":%d}`, through), "")
	if !bytes.Contains(out["error"], []byte("before the latest checkpoint")) {
		t.Fatalf("without a checkpoint: %s", out["error"])
	}
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, ed25519.SeedSize))
	cp := audit.Sign(key, head)
	if rep, err := leader.Node.Call(ctx, fsm.TypeAuditCheckpoint, "", fsm.AuditCheckpointOf(cp)); err != nil || rep.Err != nil {
		t.Fatalf("checkpoint: %v %v", err, rep)
	}
	via.want(409, "POST", "/v1/audit/prune", fmt.Sprintf(`{"through":%d}`, head.Seq), "")

	out = via.want(200, "POST", "/v1/audit/prune", fmt.Sprintf(`{"through":%d}`, through), "")
	var res transport.AuditPruneResult
	if err := json.Unmarshal([]byte(mustMarshal(out)), &res); err != nil || res.Removed != through || res.Base != through || res.Steps != 1 {
		t.Fatalf("prune answered %s (%v)", mustMarshal(out), err)
	}
	c.WaitConverged()
	for id, api := range admins {
		v := api.want(200, "GET", "/v1/audit/verify", "", "")
		var r struct {
			OK          bool   `json:"ok"`
			Pruned      uint64 `json:"pruned_through"`
			Checkpoints int    `json:"checkpoints"`
		}
		if err := json.Unmarshal([]byte(mustMarshal(v)), &r); err != nil || !r.OK || r.Pruned != through || r.Checkpoints != 1 {
			t.Fatalf("%s: verify %s (%v)", id, mustMarshal(v), err)
		}
	}
}
