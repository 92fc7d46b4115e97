package auth

import (
	"crypto/ed25519"
	"strings"
	"testing"
)

func TestCredentialRoundTrip(t *testing.T) {
	for alg, key := range vecKeys() {
		b, err := MarshalCredential("cipher", key)
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		agent, got, err := ParseCredential(b)
		if err != nil || agent != "cipher" || got.Alg != alg {
			t.Fatalf("%s: %q %+v %v", alg, agent, got, err)
		}
		sig, err := SignChallenge("nonce", "cipher", got)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyChallenge("nonce", "cipher", sig, key); err != nil {
			t.Fatalf("%s: a signature by the loaded key does not verify with the original: %v", alg, err)
		}
	}
}

func TestCredentialRefusesBadInput(t *testing.T) {
	for _, c := range []struct{ name, json, want string }{
		{"not json", `{`, "credential"},
		{"bad agent", `{"agent":"a b","alg":"ed25519","private_key":"AAAA"}`, "not an agent name"},
		{"unknown alg", `{"agent":"cipher","alg":"rsa"}`, "unknown alg"},
		{"short seed", `{"agent":"cipher","alg":"ed25519","private_key":"AAAA"}`, "32-byte"},
		{"seed not base64", `{"agent":"cipher","alg":"ed25519","private_key":"!!"}`, "32-byte"},
		{"short secret", `{"agent":"cipher","alg":"hmac-sha256","secret":"AAAA"}`, "at least 16"},
	} {
		if _, _, err := ParseCredential([]byte(c.json)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
		}
	}
	if _, err := MarshalCredential("cipher", Key{Alg: AlgEd25519, Public: make(ed25519.PublicKey, 32)}); err == nil {
		t.Error("a public key alone made a credential")
	}
}
