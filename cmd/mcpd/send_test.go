package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/client"
)

// The hint after an authentication failure suggests --cred only to a
// command that was not given one, and none for a revoked agent: the
// node's answer says why.
func TestErrHintAuth(t *testing.T) {
	wrap := func(e *client.Error) error { return fmt.Errorf("auth as \"cipher\": %w", e) }
	unknown := wrap(&client.Error{Code: "unauthenticated", Msg: `agent "cipher" is unknown`})
	revoked := wrap(&client.Error{Code: "unauthenticated", Msg: `agent "cipher" is revoked`})
	badSig := wrap(&client.Error{Code: "bad_signature", Msg: "signature does not verify"})
	for _, tc := range []struct {
		err      error
		cred     bool
		wantCred bool // the hint says to pass --cred FILE
		wantNone bool
	}{
		{unknown, false, true, false},
		{badSig, false, true, false},
		{unknown, true, false, false},
		{badSig, true, false, false},
		{revoked, true, false, true},
		{revoked, false, false, true},
	} {
		h := errHint(tc.err, tc.cred)
		if got := strings.Contains(h, "pass --cred FILE"); got != tc.wantCred {
			t.Errorf("%v (cred %v): hint %q", tc.err, tc.cred, h)
		}
		if (h == "") != tc.wantNone {
			t.Errorf("%v (cred %v): hint %q, want none: %v", tc.err, tc.cred, h, tc.wantNone)
		}
	}
}
