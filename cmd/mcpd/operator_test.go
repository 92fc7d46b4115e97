package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/transport"
)

func TestOperatorCLI(t *testing.T) {
	n := startCLINode(t)
	out := mustRun(t, operatorCmd, n.asOperator("invite", "alice", "--ttl", "2h"))
	if !strings.Contains(out, "invite code for alice") || !strings.Contains(out, "serves no web UI") {
		t.Fatalf("invite:\n%s", out)
	}
	var inv transport.AdminInvite
	if err := json.Unmarshal([]byte(mustRun(t, operatorCmd, n.asOperator("invite", "bob", "--json"))), &inv); err != nil || len(inv.Code) != 29 || inv.Name != "bob" {
		t.Fatalf("invite --json: %+v %v", inv, err)
	}
	out = mustRun(t, operatorCmd, n.asOperator("list"))
	if !strings.Contains(out, "alice") || !strings.Contains(out, "bob") || !strings.Contains(out, "(invited, expires in 2h0m0s)") || !strings.Contains(out, "operator:local") {
		t.Fatalf("list:\n%s", out)
	}
	// Removing an operator who only has an invite withdraws the invite.
	mustRun(t, operatorCmd, n.asOperator("remove", "bob"))
	var list transport.AdminOperators
	if err := json.Unmarshal([]byte(mustRun(t, operatorCmd, n.asOperator("list", "--json"))), &list); err != nil || len(list.Invites) != 1 || list.Invites[0].Name != "alice" {
		t.Fatalf("list --json after remove: %+v %v", list, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{n.asOperator("invite", "no body"), "not an operator name"},
		{n.asOperator("invite", "carol", "--ttl", "10s"), "1 minute to 7 days"},
		{n.asOperator("remove", "nobody"), "no operator"},
		{[]string{"promote"}, "expected 'mcpd operator invite"},
		{n.asOperator("list", "extra"), "unexpected argument"},
	} {
		if out, err := run(t, operatorCmd, tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v (%s), want an error with %q", tc.args, err, out, tc.want)
		}
	}
}
