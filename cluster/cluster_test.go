package cluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/internal/testcluster"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func Test_Cluster_SingleNodeRoundTrip(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	cl := c.Dial("alice")
	res, err := cl.Enqueue(ctx(t), "jobs", map[string]any{"n": 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Seq != 1 || res.Dup {
		t.Fatalf("enqueue result %+v", res)
	}
	cons, err := cl.Consume(ctx(t), "jobs", client.ConsumeOptions{Prefetch: 4})
	if err != nil {
		t.Fatal(err)
	}
	d, err := cons.Next(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if d.Seq != 1 || d.Attempt != 1 {
		t.Fatalf("delivery %+v", d)
	}
	if err := d.Ack(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(ctx(t)); !client.IsCode(err, "not_found") {
		t.Fatalf("second ack: %v", err)
	}
}

func Test_Cluster_WritesThroughFollowers(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	f := c.Followers()
	producer := c.Dial("producer", f[0].URL)
	consumer := c.Dial("consumer", f[1].URL)
	cons, err := consumer.Consume(ctx(t), "work", client.ConsumeOptions{Prefetch: 10})
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := range n {
		if _, err := producer.Enqueue(ctx(t), "work", map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[uint64]bool{}
	for len(seen) < n {
		d, err := cons.Next(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		seen[d.Seq] = true
		if err := d.Ack(ctx(t)); err != nil {
			t.Fatal(err)
		}
	}
	// Ticks may still be in flight; the replicas must converge.
	c.WaitConverged()
}
