package client

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd/mcpd/auth"
)

// These tests use the fake server, which checks no signature: it stands
// for a lying server, the only source of a forged delivery. The tests
// against a real cluster are in verify_test.go.

func newEdKey(t *testing.T) auth.Key {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return auth.Key{Alg: auth.AlgEd25519, Public: pub, Signer: priv}
}

// setKey makes the fake server answer agent.key for agent with key.
func (s *fakeServer) setKey(agent string, key auth.Key) {
	res := map[string]any{"agent": agent, "alg": key.Alg}
	if key.Alg == auth.AlgEd25519 {
		res["public_key"] = base64.StdEncoding.EncodeToString(key.Public)
	}
	s.with(func() { s.keys[agent] = res })
}

// keyFetches lists the agents of the agent.key requests received, in order.
func (s *fakeServer) keyFetches() []string {
	var out []string
	for _, f := range s.framesOf("agent.key") {
		var req struct{ Agent string }
		json.Unmarshal(f.raw, &req)
		out = append(out, req.Agent)
	}
	return out
}

// signedEnv returns an envelope from agent with body n, signed with key.
func signedEnv(t *testing.T, agent string, n int, key auth.Key) []byte {
	t.Helper()
	raw := fmt.Sprintf(`{"id":"%s-%d","from":%q,"ts":%d,"body":{"n":%d}}`, agent, n, agent, time.Now().UnixMilli(), n)
	b, err := auth.SignEnvelope([]byte(raw), agent, key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// verifyingClient dials the fake server as agent "tester" signing with
// key. VerifySenders is left at VerifyAuto: a client with an identity
// verifies what it receives.
func verifyingClient(t *testing.T, s *fakeServer, key auth.Key) *Client {
	t.Helper()
	s.setKey("tester", key)
	opts := testOptions(s)
	opts.Signer = &KeySigner{Agent: "tester", Key: key}
	return mustDial(t, opts)
}

func Test_VerifySenders_RejectsDeliveriesThatDoNotVerify(t *testing.T) {
	s := newFakeServer(t)
	key := newEdKey(t)
	c := verifyingClient(t, s, key)
	ctx := testCtx(t)

	good1, good2 := signedEnv(t, "tester", 1, key), signedEnv(t, "tester", 6, key)
	ts := time.Now().UnixMilli()
	bad := []struct{ env, reason string }{
		{strings.Replace(string(signedEnv(t, "tester", 2, key)), `"n":2`, `"n":7`, 1), "bad signature: ed25519 signature does not verify"},
		{fmt.Sprintf(`{"id":"u3","from":"tester","ts":%d,"body":3}`, ts), "bad signature: the envelope is not signed"},
		{fmt.Sprintf(`{"id":"u4","from":"tester","ts":%d,"body":4,"sig":{"alg":"none","kid":"tester"}}`, ts), `bad signature: signed with alg "none"`},
		{string(signedEnv(t, "ghost", 5, newEdKey(t))), `bad signature: the sender "ghost" is not an agent of the cluster`},
	}
	envs := [][]byte{good1}
	for _, b := range bad {
		envs = append(envs, []byte(b.env))
	}
	envs = append(envs, good2)
	for _, e := range envs {
		if _, err := c.EnqueueRaw(ctx, "jobs", e); err != nil {
			t.Fatal(err)
		}
	}
	k, err := c.Consume(ctx, "jobs", ConsumeOptions{Prefetch: 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		env []byte
		seq uint64
	}{{good1, 1}, {good2, 6}} {
		d, err := k.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(d.Msg) != string(want.env) || d.Seq != want.seq {
			t.Fatalf("delivery %d: %s, want seq %d: %s", d.Seq, d.Msg, want.seq, want.env)
		}
		v, err := d.Verify(ctx)
		if err != nil || v.ByServer || v.Envelope.From != "tester" || v.Revoked != 0 {
			t.Fatalf("Verify = %+v, %v", v, err)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The pump works in order: every bad delivery was rejected before
	// good2 was handed over.
	rejects := s.framesOf("reject")
	if len(rejects) != len(bad) {
		t.Fatalf("%d rejects, want %d", len(rejects), len(bad))
	}
	for i, f := range rejects {
		var r struct {
			Seq    uint64
			Reason string
		}
		json.Unmarshal(f.raw, &r)
		if r.Seq != uint64(i+2) || !strings.HasPrefix(r.Reason, bad[i].reason) {
			t.Errorf("reject %d: seq %d reason %q, want seq %d reason %q", i, r.Seq, r.Reason, i+2, bad[i].reason)
		}
	}
	// tester: fetched, then fetched once more when the tampered envelope
	// failed with the cached key; the unsigned ones need no key; ghost is
	// unknown; good2 uses the cache.
	if got, want := s.keyFetches(), []string{"tester", "tester", "ghost"}; !slices.Equal(got, want) {
		t.Fatalf("agent.key requests %v, want %v", got, want)
	}
}

func Test_VerifySenders_NacksWhenTheKeyCannotBeFetched(t *testing.T) {
	s := newFakeServer(t)
	key := newEdKey(t)
	c := verifyingClient(t, s, key)
	ctx := testCtx(t)
	s.with(func() { s.failKeys = 1 })
	if _, err := c.EnqueueRaw(ctx, "jobs", signedEnv(t, "tester", 1, key)); err != nil {
		t.Fatal(err)
	}
	k, err := c.Consume(ctx, "jobs", ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Not a verdict on the sender: handed back, not dead-lettered, and
	// delivered once the key can be fetched.
	d, err := k.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Seq != 1 || d.Attempt != 2 {
		t.Fatalf("delivery seq %d attempt %d, want 1 and 2", d.Seq, d.Attempt)
	}
	if n := len(s.framesOf("reject")); n != 0 {
		t.Fatalf("%d rejects", n)
	}
	s.with(func() {
		if len(s.acks) != 1 || s.acks[0] != "nack jobs/1/1" {
			t.Errorf("settled %v, want [nack jobs/1/1]", s.acks)
		}
	})
}

func Test_VerifySenders_DropsEventsThatDoNotVerify(t *testing.T) {
	s := newFakeServer(t)
	key := newEdKey(t)
	c := verifyingClient(t, s, key)
	ctx := testCtx(t)
	sub, err := c.Subscribe(ctx, "news")
	if err != nil {
		t.Fatal(err)
	}
	good1, good2 := signedEnv(t, "tester", 1, key), signedEnv(t, "tester", 3, key)
	forged := strings.Replace(string(signedEnv(t, "tester", 2, key)), `"n":2`, `"n":9`, 1)
	for _, e := range [][]byte{good1, []byte(forged), good2} {
		if _, err := c.PublishRaw(ctx, "news", e); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range [][]byte{good1, good2} {
		ev, err := sub.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(ev.Msg) != string(want) {
			t.Fatalf("event %s, want %s", ev.Msg, want)
		}
		if _, err := ev.Verify(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := sub.Unverified(); n != 1 {
		t.Fatalf("Unverified = %d, want 1", n)
	}
	if _, err := (&Event{Msg: good1}).Verify(ctx); err == nil {
		t.Fatal("Verify of an event no client received succeeded")
	}
}

func Test_VerifyEnvelope_RefetchesOnceOnFailure(t *testing.T) {
	s := newFakeServer(t)
	old, rotated := newEdKey(t), newEdKey(t)
	c := verifyingClient(t, s, old)
	ctx := testCtx(t)
	byOld, byRotated := signedEnv(t, "tester", 1, old), signedEnv(t, "tester", 2, rotated)
	if _, err := c.VerifyEnvelope(ctx, byOld); err != nil {
		t.Fatal(err)
	}
	s.setKey("tester", rotated)
	// The cached key fails; the key fetched again verifies.
	if _, err := c.VerifyEnvelope(ctx, byRotated); err != nil {
		t.Fatal(err)
	}
	// The old key is gone: one more fetch, then the verdict.
	if _, err := c.VerifyEnvelope(ctx, byOld); !errors.Is(err, ErrBadSender) || !errors.Is(err, auth.ErrBadSignature) {
		t.Fatalf("envelope of a replaced key: %v", err)
	}
	if _, err := c.VerifyEnvelope(ctx, byRotated); err != nil {
		t.Fatal(err)
	}
	if n := len(s.keyFetches()); n != 3 {
		t.Fatalf("%d agent.key requests, want 3", n)
	}
}

func Test_VerifyEnvelope_FetchesAKeyOnceForConcurrentCalls(t *testing.T) {
	s := newFakeServer(t)
	key := newEdKey(t)
	c := verifyingClient(t, s, key)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		env := signedEnv(t, "tester", i, key)
		wg.Go(func() {
			if _, err := c.VerifyEnvelope(ctx, env); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(s.keyFetches()); n != 1 {
		t.Fatalf("%d agent.key requests, want 1", n)
	}
}

func Test_VerifyEnvelope_CacheIsBoundedAndExpires(t *testing.T) {
	s := newFakeServer(t)
	c := verifyingClient(t, s, newEdKey(t))
	c.keys.size = 2
	ctx := testCtx(t)
	keys := map[string]auth.Key{}
	for _, a := range []string{"a", "b", "c"} {
		keys[a] = newEdKey(t)
		s.setKey(a, keys[a])
	}
	verify := func(agent string) {
		t.Helper()
		if _, err := c.VerifyEnvelope(ctx, signedEnv(t, agent, 1, keys[agent])); err != nil {
			t.Fatal(err)
		}
	}
	verify("a")
	verify("b")
	verify("c") // evicts a, fetched longest ago
	if n := c.keys.len(); n != 2 {
		t.Fatalf("%d keys cached, want 2", n)
	}
	verify("c")
	verify("a") // evicts b
	verify("c")
	c.keys.mu.Lock()
	c.keys.entries["c"].fetched = time.Now().Add(-keyCacheTTL)
	c.keys.mu.Unlock()
	verify("c") // expired
	if got, want := s.keyFetches(), []string{"a", "b", "c", "a", "c"}; !slices.Equal(got, want) {
		t.Fatalf("agent.key requests %v, want %v", got, want)
	}
}

func Test_VerifyEnvelope_HMACSenderIsServerVerified(t *testing.T) {
	s := newFakeServer(t)
	c := verifyingClient(t, s, newEdKey(t))
	ctx := testCtx(t)
	secret := auth.Key{Alg: auth.AlgHMACSHA256, Secret: []byte("0123456789abcdef0123456789abcdef")}
	s.setKey("legacy", secret)
	v, err := c.VerifyEnvelope(ctx, signedEnv(t, "legacy", 1, secret))
	if err != nil || !v.ByServer || v.Envelope.From != "legacy" {
		t.Fatalf("hmac sender: %+v, %v", v, err)
	}
	// The form is still checked: another algorithm, or another kid.
	other, err := auth.SignEnvelope([]byte(fmt.Sprintf(`{"id":"x","from":"legacy","ts":%d}`, time.Now().UnixMilli())), "editor", secret)
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range [][]byte{signedEnv(t, "legacy", 2, newEdKey(t)), other} {
		if _, err := c.VerifyEnvelope(ctx, env); !errors.Is(err, ErrBadSender) {
			t.Errorf("%s: %v, want ErrBadSender", env, err)
		}
	}
}
