package main

import (
	"os"
	"strings"
	"testing"
)

// runStderr runs a command line as main does and returns its exit status
// and what it wrote to standard error.
func runStderr(t *testing.T, args ...string) (int, string) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	saved := os.Stderr
	os.Stderr = f
	defer func() { os.Stderr = saved }()
	code := runMain(args)
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return code, string(b)
}

// Every command answers -h with its usage and exit status 0; a command
// group's usage names each of its subcommands, and each of those answers
// -h too (so the usage lists only subcommands that exist).
func TestCommandHelp(t *testing.T) {
	groups := map[string][]string{
		"agent":      {"add", "list", "show", "revoke"},
		"task":       {"submit", "get", "watch", "cancel", "list", "approve", "deny", "show", "verify"},
		"capability": {"sensitive", "plain", "list"},
		"queue":      {"list", "peek", "redrive", "delete"},
		"schedule":   {"add", "list", "pause", "resume", "delete", "history"},
		"operator":   {"invite", "list", "remove"},
		"tls":        {"init"},
		"cluster":    {"status", "join", "remove", "transfer-leadership", "recover"},
		"audit":      {"verify", "export", "tail", "search", "prune", "key"},
		"snapshot":   {"save", "inspect", "restore"},
	}
	// The commands without subcommands, and what their usage must say.
	plain := map[string]string{
		"serve":  "-node-id",
		"send":   "usage: mcpd send",
		"recv":   "usage: mcpd recv",
		"bench":  "usage: mcpd bench",
		"agents": "usage: mcpd agents",
		"keygen": "usage: mcpd keygen FILE\n\nCreate the cluster's secret key",
		"check":  "-data-dir",
	}
	for _, c := range commands {
		subs, isGroup := groups[c.name]
		want, isPlain := plain[c.name]
		if !isGroup && !isPlain {
			t.Errorf("command %s is not covered by this test", c.name)
			continue
		}
		if isPlain {
			for _, h := range []string{"-h", "--help"} {
				code, out := runStderr(t, c.name, h)
				if code != 0 || !strings.Contains(out, want) {
					t.Errorf("mcpd %s %s: exit %d, want 0 and a usage with %q:\n%s", c.name, h, code, want, out)
				}
			}
			continue
		}
		for _, h := range []string{"-h", "-help", "--help", "help"} {
			code, out := runStderr(t, c.name, h)
			if code != 0 || !strings.HasPrefix(out, "usage:\n") {
				t.Errorf("mcpd %s %s: exit %d, want 0 and the group's usage:\n%s", c.name, h, code, out)
				continue
			}
			for _, sub := range subs {
				if !strings.Contains(out, "\n  mcpd "+c.name+" "+sub+" ") {
					t.Errorf("mcpd %s %s does not show %q:\n%s", c.name, h, sub, out)
				}
			}
		}
		for _, sub := range subs {
			if code, out := runStderr(t, c.name, sub, "-h"); code != 0 || out == "" {
				t.Errorf("mcpd %s %s -h: exit %d, want 0 and its flags:\n%s", c.name, sub, code, out)
			}
		}
		// A subcommand that does not exist is still a usage error.
		if code, out := runStderr(t, c.name, "nosuch"); code != 2 || !strings.Contains(out, "Run 'mcpd "+c.name+" -h' for usage.") {
			t.Errorf("mcpd %s nosuch: exit %d, want 2:\n%s", c.name, code, out)
		}
	}
}

// The top-level help's line for audit names everything audit does, for
// running nodes as well as offline.
func TestTopLevelHelpAudit(t *testing.T) {
	code, out := runStderr(t, "--help")
	if code != 0 {
		t.Fatalf("mcpd --help: exit %d", code)
	}
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "  audit ") {
			line = l
		}
	}
	for _, sub := range []string{"verify", "export", "search", "tail", "prune", "running node", "offline"} {
		if !strings.Contains(line, sub) {
			t.Errorf("the audit line does not say %q: %q", sub, line)
		}
	}
}

// A missing name is named for what it is: a queue, an operator, a
// schedule, an agent.
func TestMissingNameMessages(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"queue", "peek"}, "expected one queue NAME"},
		{[]string{"queue", "peek", "--limit", "5"}, "expected one queue NAME"},
		{[]string{"operator", "invite"}, "expected one operator NAME"},
		{[]string{"operator", "remove"}, "expected one operator NAME"},
		{[]string{"schedule", "add", "--cron", "@hourly"}, "expected one schedule NAME"},
		{[]string{"schedule", "pause"}, "expected one schedule NAME"},
		{[]string{"schedule", "history"}, "expected one schedule NAME"},
		{[]string{"agent", "show"}, "expected one agent NAME"},
		{[]string{"agent", "revoke"}, "expected one agent NAME"},
	} {
		code, out := runStderr(t, tc.args...)
		if code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("mcpd %s: exit %d, want 2 and %q:\n%s", strings.Join(tc.args, " "), code, tc.want, out)
		}
	}
}

// cluster join -h shows the positional form ID=HOST:PORT the docs use,
// beside --id and --addr.
func TestClusterJoinUsage(t *testing.T) {
	code, out := runStderr(t, "cluster", "join", "-h")
	for _, want := range []string{"mcpd cluster join ID=HOST:PORT", "mcpd cluster join --id ID --addr HOST:PORT", "-addr", "-id"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("mcpd cluster join -h: exit %d, want 0 and %q:\n%s", code, want, out)
		}
	}
}
