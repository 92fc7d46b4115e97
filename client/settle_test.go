package client_test

import (
	"testing"

	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/internal/testcluster"
)

// A nack's reason reaches the dead letter its last attempt makes; a
// nack without one leaves the plain max_attempts.
func TestNackReasonNamesTheDeadLetter(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	cl := c.Dial("worker")
	ctx := testCtx(t)
	if _, err := cl.DeclareQueue(ctx, "jobs", client.QueueSettings{MaxAttempts: 1}); err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{"with", "without"} {
		if _, err := cl.Enqueue(ctx, "jobs", body); err != nil {
			t.Fatal(err)
		}
	}
	k, err := cl.Consume(ctx, "jobs", client.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, reason := range []string{"upstream 503", ""} {
		d, err := k.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.NackReason(ctx, -1, reason); err != nil {
			t.Fatal(err)
		}
	}
	dlq, err := cl.Consume(ctx, "jobs.dlq", client.ConsumeOptions{Prefetch: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"max_attempts: upstream 503", "max_attempts"} {
		d, err := dlq.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d.Dead == nil || d.Dead.Reason != want {
			t.Fatalf("dead letter %s: %+v, want reason %q", d.Msg, d.Dead, want)
		}
	}
}
