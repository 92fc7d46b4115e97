package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mcpd/mcpd/client"
)

// dialAs connects as an agent with its credential, retrying while the
// node has not applied the agent's addition yet.
func dialAs(t *testing.T, c *faultCluster, cred string, urls ...string) *client.Client {
	t.Helper()
	signer, err := client.LoadCredentials(cred)
	if err != nil {
		t.Fatal(err)
	}
	var cl *client.Client
	waitFor(t, 20*time.Second, "a signed connection as "+signer.Agent, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cl, err = client.Dial(ctx, client.Options{URLs: urls, Agent: signer.Agent, CAFile: c.ca, Signer: signer})
		return err
	})
	t.Cleanup(func() { cl.Close() })
	return cl
}

// The whole trust model in a three-node cluster with mutual TLS between
// nodes: identities added on one node work on the others, dev auth is
// refused, envelopes are signed and verified end to end across a leader
// failover, revocation cuts the agent off everywhere, and every node ends
// with the same verified audit chain.
func Test_Trust_Cluster(t *testing.T) {
	const queue, total = "trust.jobs", 300
	c := newFaultCluster(t, 3, clusterOpts{secure: true})
	c.waitAllReady(30 * time.Second)
	dir := t.TempDir()
	cred := func(name string) string { return filepath.Join(dir, name+".cred") }
	add := func(k int, name string, flags ...string) {
		args := append([]string{"agent", "add", name, "--data-dir", c.node(k).data, "--out", cred(name)}, flags...)
		if _, stderr, err := mcpdOut(t, args...); err != nil {
			t.Fatalf("agent add %s on n%d: %v\n%s", name, k, err, stderr)
		}
	}
	add(1, "producer", "--allow-enqueue", "trust.*")
	add(2, "consumer", "--allow-consume", "trust.*", "--alg", "hmac-sha256")

	// Without an identity nobody gets in.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, nd := range c.nodes {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := client.Dial(dctx, client.Options{URLs: []string{nd.url}, Agent: "producer", CAFile: c.ca})
		dcancel()
		if !client.IsCode(err, "unauthenticated") {
			t.Fatalf("alg none on %s: %v, want unauthenticated", nd.id, err)
		}
	}

	prod := dialAs(t, c, cred("producer"), c.node(3).url, c.node(2).url, c.node(1).url)
	// A client with an identity verifies the senders of what it receives.
	cons := dialAs(t, c, cred("consumer"), c.node(2).url, c.node(1).url, c.node(3).url)
	if _, err := cons.Enqueue(ctx, queue, 1); !client.IsCode(err, "forbidden") {
		t.Fatalf("consumer enqueue: %v, want forbidden", err)
	}
	k, err := cons.Consume(ctx, queue, client.ConsumeOptions{Prefetch: 32})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	done := make(chan error, 1)
	go func() {
		for len(got) < total {
			d, err := k.Next(ctx)
			if err != nil {
				done <- err
				return
			}
			var env struct {
				From string          `json:"from"`
				Body json.RawMessage `json:"body"`
			}
			if err := json.Unmarshal(d.Msg, &env); err != nil || env.From != "producer" {
				done <- fmt.Errorf("delivery %s: from %q (%v)", d.Msg, env.From, err)
				return
			}
			got[string(env.Body)] = true
			// A failed ack (the connection dropped with the leader) is
			// redelivered: at least once.
			_ = d.Ack(ctx)
		}
		done <- nil
	}()

	leader := c.leader(20 * time.Second)
	for i := range total {
		if i == total/2 {
			t.Logf("killing the leader %s", leader.id)
			leader.kill()
		}
		if _, err := prod.Enqueue(ctx, queue, i); err != nil {
			t.Fatalf("enqueue %d: %v", i, err)
		}
	}
	leader.start(t)
	if err := <-done; err != nil {
		t.Fatalf("consumer: %v", err)
	}
	if len(got) != total {
		t.Fatalf("%d distinct messages delivered, want %d", len(got), total)
	}

	// Revoked on one node, the producer is cut off on the node it uses.
	if out, stderr, err := mcpdOut(t, "agent", "revoke", "producer", "--data-dir", c.node(2).data); err != nil {
		t.Fatalf("revoke: %v\n%s%s", err, out, stderr)
	}
	waitFor(t, 20*time.Second, "the revoked producer to be refused", func() error {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		defer pcancel()
		if _, err := prod.Enqueue(pctx, queue, "after"); err == nil {
			return errorString("enqueue after revoke succeeded")
		}
		return nil
	})
	prod.Close()
	cons.Close()

	// Every node: the same applied state, and the same audit chain, which
	// verifies against the cluster's key with its signed checkpoints.
	c.waitAllReady(30 * time.Second)
	c.converged(30 * time.Second)
	key, _, err := mcpdOut(t, "audit", "key", "--cluster-key-file", c.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	key = strings.TrimSpace(key)
	waitFor(t, 30*time.Second, "the same verified audit head on every node", func() error {
		var heads []string
		for _, nd := range c.nodes {
			out, stderr, err := mcpdOut(t, "audit", "verify", "--node", "--data-dir", nd.data, "--key", key, "--json")
			if err != nil {
				return fmt.Errorf("%s: %v %s %s", nd.id, err, out, stderr)
			}
			var rep struct {
				OK          bool `json:"ok"`
				Entries     uint64
				Checkpoints uint64
				Head        struct{ Hash string }
			}
			if err := json.Unmarshal([]byte(out), &rep); err != nil || !rep.OK || rep.Checkpoints == 0 {
				return fmt.Errorf("%s: %s (%v)", nd.id, out, err)
			}
			heads = append(heads, fmt.Sprintf("%d entries, head %s", rep.Entries, rep.Head.Hash))
		}
		if heads[0] != heads[1] || heads[1] != heads[2] {
			return fmt.Errorf("heads differ: %v", heads)
		}
		t.Logf("audit on every node: %s", heads[0])
		return nil
	})
}
