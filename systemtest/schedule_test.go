package systemtest

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// mcpd schedule against a dev node: a schedule firing every second
// enqueues at each tick; list, history, pause, resume and delete behave;
// bad expressions, zones and names are refused with the reason.
func Test_Schedule_CLI(t *testing.T) {
	p, dataDir, health, _ := devNode(t)
	p.start(t)
	waitReady(t, health, 20*time.Second)
	cli := func(args ...string) string {
		t.Helper()
		out, stderr, err := mcpdOut(t, append(args, "--data-dir", dataDir)...)
		if err != nil {
			t.Fatalf("mcpd %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
	if out := cli("schedule", "add", "pulse", "--cron", "* * * * * *", "--enqueue", "rhythm.pulse", "--body", `{"beat":1}`); !strings.Contains(out, "schedule pulse added") {
		t.Fatalf("add: %s", out)
	}
	cli("schedule", "add", "standup", "--cron", "30 9 * * 1-5", "--tz", "Europe/Paris", "--task", "report.daily", "--input", `{"scope":"team"}`, "--misfire", "once")
	var h []struct {
		Tick   int64
		Result string
	}
	waitFor(t, 20*time.Second, "three firings", func() error {
		if err := json.Unmarshal([]byte(cli("schedule", "history", "pulse", "--json")), &h); err != nil {
			return err
		}
		if len(h) < 3 {
			return fmt.Errorf("%d firings", len(h))
		}
		return nil
	})
	for i := 1; i < len(h); i++ {
		if h[i].Tick-h[i-1].Tick != 1000 || !strings.HasPrefix(h[i].Result, "rhythm.pulse/") {
			t.Fatalf("history: %+v", h)
		}
	}
	list := cli("schedule", "list")
	if !strings.Contains(list, "pulse") || !strings.Contains(list, "30 9 * * 1-5 (Europe/Paris)") || !strings.Contains(list, "task report.daily") {
		t.Fatalf("list:\n%s", list)
	}
	cli("schedule", "pause", "pulse")
	if !strings.Contains(cli("schedule", "list"), "paused") {
		t.Fatal("not shown paused")
	}
	cli("schedule", "resume", "pulse")
	cli("schedule", "delete", "pulse")
	if strings.Contains(cli("schedule", "list"), "pulse") {
		t.Fatal("deleted schedule still listed")
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"schedule", "add", "bad", "--cron", "61 * * * *", "--enqueue", "q"}, "cron"},
		{[]string{"schedule", "add", "bad", "--cron", "* * * * *", "--tz", "Mars/Olympus", "--enqueue", "q"}, "tz"},
		{[]string{"schedule", "add", "bad name", "--cron", "* * * * *", "--enqueue", "q"}, "name"},
		{[]string{"schedule", "add", "standup", "--cron", "* * * * *", "--enqueue", "q"}, "conflict"},
		{[]string{"schedule", "pause", "nosuch"}, "not_found"},
		{[]string{"schedule", "add", "x", "--cron", "* * * * *"}, "--enqueue"},
	} {
		_, stderr, err := mcpdOut(t, append(c.args, "--data-dir", dataDir)...)
		if err == nil || !strings.Contains(stderr, c.want) {
			t.Errorf("mcpd %s: %v %q, want an error naming %q", strings.Join(c.args, " "), err, stderr, c.want)
		}
	}
}
