package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gowebpki/jcs"
)

var envelopeSeeds = []string{
	`{"id":"01JD0Z7K2M9P4Q1R8S3T5V6W7X","from":"alice","ts":1700000000000,"intent":"analyze","parent":"01JD","body":{"task":"t","n":[1,2.5,-0,1e3]}}`,
	`{"id":"1","from":"a","ts":1700000000000,"sig":{"alg":"none","kid":"k"}}`,
	`{"id":"1","from":"a","ts":1700000000000,"sig":{"alg":"ed25519"}}`,
	`{"id":"1","from":"a","ts":1700000000000,"sig":null}`,
	`{"id":"1","from":"a","ts":1700000000000,"sig":"none"}`,
	`{"id":"1","from":"a","ts":1700000000000,"intent":null,"parent":null,"body":null}`,
	`  {"from":"a","ts":-9223372036854775808,"id":"z"}  `,
	`{"id":"1","from":"a","ts":9007199254740993}`,
	`{"id":"1","from":"a","ts":9223372036854775808}`,
	`{"id":"1","from":"a","ts":1.0}`,
	`{"id":"1","from":"a","ts":1e3}`,
	`{"id":"1","from":"a","ts":"1"}`,
	`{"id":"1","from":"a"}`,
	`{"id":"","from":"a","ts":1}`,
	`{"id":"` + strings.Repeat("x", 129) + `","from":"a","ts":1}`,
	`{"id":"1","from":"a.dlq","ts":1}`,
	`{"id":"1","from":"a b","ts":1}`,
	`{"id":1,"from":"a","ts":1}`,
	`{"id":"1","from":"a","ts":1,"intent":7}`,
	`{"id":"1","id":"2","from":"a","ts":1}`,
	`{"id":"1","from":"a","ts":1,"body":{"k":1,"k":2}}`,
	"{\"id\":\"\xff\",\"from\":\"a\",\"ts\":1}",
	"{\"id\":\"1\",\"from\":\"a\",\"ts\":1,\"body\":\"\xed\xa0\x80\"}",
	`{"id":"\ud800","from":"a","ts":1}`,
	`{"id":"\ud83d\ude00","from":"a","ts":1,"body":"\u0000\u2028"}`,
	"{\"id\":\"1\",\"from\":\"a\",\"ts\":1,\"body\":\"a\x00b\"}",
	`{"id":"1","from":"a","ts":1,"body":1e400}`,
	`{"id":"1","from":"a","ts":1,"body":123456789012345678901234567890}`,
	`{"id":"1","from":"a","ts":1,"body":` + strings.Repeat("[", 1000) + strings.Repeat("]", 1000) + `}`,
	`{"id":"1","from":"a","ts":1,"body":` + strings.Repeat(`{"a":`, 20) + `0` + strings.Repeat("}", 20) + `}`,
	`{"id":"1","from":"a","ts":1,"body":{"a":1}`,
	`{"id":"1","from":"a","ts":1} {"id":"2"}`,
	`{"id":"1","from":"a","ts":1}]`,
	`[{"id":"1","from":"a","ts":1}]`,
	`null`,
	``,
}

// FuzzParseEnvelope checks auth.ParseEnvelope, which reads every msg a
// client sends. Nothing may panic; a rejection wraps ErrBadEnvelope. What
// is accepted is one JSON value of valid UTF-8 (it is stored and delivered
// byte for byte in text frames), its fields obey PROTOCOL.md, Hash is the
// SHA-256 of its JCS form, and its JCS form parses to the same envelope
// with the same Hash (ts may differ only beyond 2^53, where JCS compares
// numbers as doubles).
func FuzzParseEnvelope(f *testing.F) {
	for _, s := range envelopeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := ParseEnvelope(raw)
		if err != nil {
			if e != nil || !errors.Is(err, ErrBadEnvelope) {
				t.Fatalf("rejection %v does not wrap ErrBadEnvelope", err)
			}
			return
		}
		if !json.Valid(raw) || !utf8.Valid(raw) {
			t.Fatalf("accepted %q, not one JSON value of UTF-8", raw)
		}
		if !bytes.Equal(e.Raw, raw) {
			t.Fatal("Raw differs from the input")
		}
		if len(e.ID) == 0 || len(e.ID) > 128 || !ValidAgentName(e.From) {
			t.Fatalf("accepted id %q from %q", e.ID, e.From)
		}
		if e.Sig != nil && e.Sig[0] != '{' {
			t.Fatalf("accepted sig %s", e.Sig)
		}
		canon, err := jcs.Transform(raw)
		if err != nil {
			t.Fatalf("accepted %q that JCS rejects: %v", raw, err)
		}
		if e.Hash != sha256.Sum256(canon) {
			t.Fatal("Hash is not the SHA-256 of the JCS form")
		}
		// Beyond 2^53 the JCS form of ts is a rounded double, possibly
		// in exponent form; below, it is the same integer.
		if e.TS >= -(1<<53) && e.TS <= 1<<53 {
			c, err := ParseEnvelope(canon)
			if err != nil {
				t.Fatalf("JCS form %s of an accepted envelope rejected: %v", canon, err)
			}
			if c.ID != e.ID || c.From != e.From || c.TS != e.TS || c.Intent != e.Intent || c.Parent != e.Parent || c.Hash != e.Hash {
				t.Fatalf("JCS form parses differently:\n%+v\n%+v", e, c)
			}
		}
		// The dev-mode checks never panic and accept only what they say.
		for _, agent := range []string{e.From, "other"} {
			err := e.CheckDev(agent, e.TS, 300_000)
			switch {
			case agent != e.From:
				if !errors.Is(err, ErrWrongSender) {
					t.Fatalf("CheckDev as %q: %v", agent, err)
				}
			case err != nil && !errors.Is(err, ErrBadEnvelope):
				t.Fatalf("CheckDev: %v", err)
			case err == nil && e.Sig != nil:
				var s struct{ Alg string }
				if json.Unmarshal(e.Sig, &s) != nil || s.Alg != "none" {
					t.Fatalf("CheckDev accepted sig %s", e.Sig)
				}
			}
		}
		if err := e.CheckDev(e.From, e.TS-300_001, 300_000); !errors.Is(err, ErrSkew) {
			t.Fatalf("CheckDev beyond the skew: %v", err)
		}
	})
}

// FuzzNames checks the name predicates used on every queue, inbox and
// agent name a client sends: no panic, and the relations between them.
func FuzzNames(f *testing.F) {
	for _, s := range []string{"alice", "@alice", "@alice.dlq.dlq", "jobs.dlq", ".dlq", "@.dlq", "@", "", "a\x00b", "\xff", "@a.dlq", strings.Repeat("q", 201), strings.Repeat("q.dlq", 300)} {
		f.Add(s, "alice")
	}
	f.Fuzz(func(t *testing.T, queue, agent string) {
		vq, va := ValidQueueName(queue), ValidAgentName(agent)
		if vq && (len(queue) > maxQueueRef || len(queue) == 0) {
			t.Fatalf("queue name %q accepted", queue)
		}
		if vq && strings.ContainsFunc(queue, func(r rune) bool {
			return !(r == '@' || r == '.' || r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
		}) {
			t.Fatalf("queue name %q with other characters accepted", queue)
		}
		if va && !ValidQueueName(agent) {
			t.Fatalf("agent name %q is not a valid queue name", agent)
		}
		if va && (!ValidQueueName("@"+agent) || !InboxAllowed("@"+agent, agent) || !InboxAllowed("@"+agent+".dlq", agent)) {
			t.Fatalf("inbox of %q not usable by its agent", agent)
		}
		if vq && IsInbox(queue) && va && InboxAllowed(queue, agent) && stripDLQ(queue) != "@"+agent {
			t.Fatalf("%q allowed to %q", queue, agent)
		}
	})
}
