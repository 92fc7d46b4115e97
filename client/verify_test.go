package client_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/client"
	"github.com/mcpd/mcpd/internal/testcluster"
)

// Against a real cluster, which refuses envelopes that do not verify:
// every delivery here is genuine. Forgeries, which only a lying server
// could deliver, are tested with the fake server (verify_internal_test.go).

// secureCluster is a one-node cluster without dev authentication and the
// admin API that adds its agents.
type secureCluster struct {
	t *testing.T
	c *testcluster.Cluster
}

func startSecure(t *testing.T) *secureCluster {
	t.Helper()
	return &secureCluster{t: t, c: testcluster.Start(t, 1, testcluster.Options{Secure: true})}
}

// addAgent adds an agent that may use every queue and topic and returns
// its signer.
func (s *secureCluster) addAgent(name, alg string) *client.KeySigner {
	s.t.Helper()
	key := s.c.AddAgent(name, alg, auth.ACL{
		Enqueue: []string{"*"}, Consume: []string{"*"}, Publish: []string{"*"}, Subscribe: []string{"*"},
	}, auth.Limits{})
	return &client.KeySigner{Agent: name, Key: key}
}

func dial(t *testing.T, c *testcluster.Cluster, agent string, signer client.Signer, verify client.Verification) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, client.Options{
		URLs: c.URLs(), Agent: agent, Signer: signer, VerifySenders: verify, TLSConfig: c.TLS.ClientTLS(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestVerifySendersAgainstACluster(t *testing.T) {
	s := startSecure(t)
	producer := dial(t, s.c, "cipher", s.addAgent("cipher", auth.AlgEd25519), client.VerifyNever)
	legacy := dial(t, s.c, "legacy", s.addAgent("legacy", auth.AlgHMACSHA256), client.VerifyNever)
	consumer := dial(t, s.c, "editor", s.addAgent("editor", auth.AlgEd25519), client.VerifyAuto)
	ctx := testCtx(t)

	sub, err := consumer.Subscribe(ctx, "news")
	if err != nil {
		t.Fatal(err)
	}
	k, err := consumer.Consume(ctx, "jobs", client.ConsumeOptions{Prefetch: 4})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := producer.Enqueue(ctx, "jobs", map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := legacy.Enqueue(ctx, "jobs", "from hmac"); err != nil {
		t.Fatal(err)
	}
	if _, err := producer.Publish(ctx, "news", "hello"); err != nil {
		t.Fatal(err)
	}

	for i, want := range []struct {
		from     string
		byServer bool
	}{{"cipher", false}, {"cipher", false}, {"cipher", false}, {"legacy", true}} {
		d, err := k.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		v, err := d.Verify(ctx)
		if err != nil || v.Envelope.From != want.from || v.ByServer != want.byServer || d.Seq != uint64(i+1) {
			t.Fatalf("delivery %d: %+v, %v; want from %s, by server %v", d.Seq, v, err, want.from, want.byServer)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ev, err := sub.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := ev.Verify(ctx); err != nil || v.Envelope.From != "cipher" || v.ByServer {
		t.Fatalf("event: %+v, %v", v, err)
	}
	if n := sub.Unverified(); n != 0 {
		t.Fatalf("Unverified = %d", n)
	}
}

func TestVerifySendersRejectsUnsignedDevEnvelopes(t *testing.T) {
	c := testcluster.Start(t, 1, testcluster.Options{})
	producer := c.Dial("cipher")
	strict := dial(t, c, "editor", nil, client.VerifyAlways)
	// VerifyAuto without an identity does not verify: the dev server's
	// unsigned envelopes reach it.
	lax := dial(t, c, "auditor", nil, client.VerifyAuto)
	ctx := testCtx(t)

	k, err := strict.Consume(ctx, "jobs", client.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := producer.Enqueue(ctx, "jobs", "unsigned"); err != nil {
		t.Fatal(err)
	}
	// Without verification a dev server stays usable: the dead letter
	// arrives, with the reason the verifying consumer gave.
	dlq, err := lax.Consume(ctx, "jobs.dlq", client.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := dlq.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Dead == nil || !strings.HasPrefix(d.Dead.Reason, "rejected: bad signature: ") || d.Dead.Seq != 1 {
		t.Fatalf("dead letter %+v", d.Dead)
	}
	select {
	case d := <-k.C():
		t.Fatalf("the verifying consumer was handed %s", d.Msg)
	default:
	}
}
