package auth

import (
	"crypto/ed25519"
	"fmt"
	"strings"
	"testing"
)

// benchEnvelope is a 256-byte-class envelope, the size mcpd bench sends.
func benchEnvelope() []byte {
	return []byte(fmt.Sprintf(`{"id":"01JD0Z8V4Q3ZK7Y2M5N8P1R6TA","from":"bencher","ts":1764000000000,"body":%q}`, strings.Repeat("x", 160)))
}

func benchKeys() (Key, Key) {
	seed := make([]byte, ed25519.SeedSize)
	priv := ed25519.NewKeyFromSeed(seed)
	ed := Key{Alg: AlgEd25519, Public: priv.Public().(ed25519.PublicKey), Signer: priv}
	hm := Key{Alg: AlgHMACSHA256, Secret: []byte("0123456789abcdef0123456789abcdef")}
	return ed, hm
}

// BenchmarkEnvelope measures what the server does per envelope: parse it
// (with the canonical hash for deduplication), and for an identity verify
// its signature; and what a client does to sign one.
func BenchmarkEnvelope(b *testing.B) {
	ed, hm := benchKeys()
	raw := benchEnvelope()
	b.Run("parse", func(b *testing.B) {
		for b.Loop() {
			if _, err := ParseEnvelope(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, k := range []Key{ed, hm} {
		signed, err := SignEnvelope(raw, "bencher", k)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("sign/"+k.Alg, func(b *testing.B) {
			for b.Loop() {
				if _, err := SignEnvelope(raw, "bencher", k); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("parse+verify/"+k.Alg, func(b *testing.B) {
			for b.Loop() {
				e, err := ParseEnvelope(signed)
				if err != nil {
					b.Fatal(err)
				}
				if err := VerifyEnvelope(e, k); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
