package client_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/client"
)

// A delegated task's provenance checks out hop by hop against the agents'
// registered keys; a tampered envelope, a reordered chain or a hop that
// is not the task's are refused.
func TestVerifyTaskChain(t *testing.T) {
	s := startSecure(t)
	agent := func(name string) *client.Client {
		key := s.c.AddAgent(name, auth.AlgEd25519, auth.ACL{Register: []string{"*"}, Submit: []string{"*"}}, auth.Limits{})
		return dial(t, s.c, name, &client.KeySigner{Agent: name, Key: key}, client.VerifyNever)
	}
	origin, editor, reviewer := agent("cipher"), agent("editor"), agent("reviewer")
	ctx := testCtx(t)
	if err := editor.Register(ctx, []client.Capability{{Name: "edit", MaxInflight: 1}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := reviewer.Register(ctx, []client.Capability{{Name: "review", MaxInflight: 1}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := origin.SubmitTasks(ctx, client.SubmitRequest{Intent: "a checked article", Tasks: []client.TaskSpec{{Ref: "draft", Capability: "edit", Input: "tides"}}}); err != nil {
		t.Fatal(err)
	}
	draft := <-editor.Tasks()
	ids, _, err := draft.Delegate(ctx, client.SubmitRequest{Tasks: []client.TaskSpec{{Ref: "check", Capability: "review", Input: "the moon part"}}})
	if err != nil {
		t.Fatal(err)
	}
	<-reviewer.Tasks()
	g, err := reviewer.GetTask(ctx, ids["check"])
	if err != nil || g.Task == nil {
		t.Fatalf("task.get: %v", err)
	}
	checks, err := reviewer.VerifyTaskChain(ctx, g.Task)
	if err != nil || len(checks) != 2 || checks[0].Verified == nil || checks[1].Verified == nil || checks[0].Hop.Agent != "cipher" {
		t.Fatalf("a sound chain: %+v %v", checks, err)
	}

	tampered := *g.Task
	tampered.Hops = append([]client.TaskHop(nil), g.Task.Hops...)
	tampered.Hops[0].Envelope = bytes.Replace(tampered.Hops[0].Envelope, []byte("tides"), []byte("tidez"), 1)
	if checks, err := reviewer.VerifyTaskChain(ctx, &tampered); !errors.Is(err, client.ErrBrokenChain) || checks[0].Err == nil {
		t.Fatalf("a tampered hop: %v", err)
	}
	swapped := *g.Task
	swapped.Chain = []string{"editor", "cipher"}
	if _, err := reviewer.VerifyTaskChain(ctx, &swapped); !errors.Is(err, client.ErrBrokenChain) {
		t.Fatalf("a reordered chain: %v", err)
	}
	other := *g.Task
	other.Input = []byte(`{"id":"x","from":"editor","ts":1,"body":"else"}`)
	if _, err := reviewer.VerifyTaskChain(ctx, &other); !errors.Is(err, client.ErrBrokenChain) {
		t.Fatalf("a last hop that is not the task's input: %v", err)
	}
}
