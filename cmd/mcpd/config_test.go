package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mcpd.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Serve flags (as runServe registers them) through a
// file: values by flag name, tables as prefixes, [peers] as the list,
// and the command line wins.
func Test_Config_ServeFlagsFromTOML(t *testing.T) {
	p := writeConfig(t, `
node-id = "n2"
data-dir = "/var/lib/mcpd"
bind = "10.0.0.2"
port = 5433
insecure-auth-none = true
log-level = "warn"

[raft]
heartbeat-timeout = "750ms"
election-timeout = "2s"

[peers]
n1 = "10.0.0.1:4438"
n2 = "10.0.0.2:4438"
n3 = "10.0.0.3:4438"
`)
	var f serveFlags
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&f.nodeID, "node-id", "", "")
	fs.StringVar(&f.dataDir, "data-dir", "mcpd-data", "")
	fs.StringVar(&f.bind, "bind", "127.0.0.1", "")
	fs.StringVar(&f.peers, "peers", "", "")
	fs.IntVar(&f.port, "port", 4433, "")
	fs.BoolVar(&f.authNone, "insecure-auth-none", false, "")
	fs.StringVar(&f.logLevel, "log-level", "info", "")
	fs.DurationVar(&f.heartbeat, "raft-heartbeat-timeout", time.Second, "")
	fs.DurationVar(&f.election, "raft-election-timeout", time.Second, "")
	if err := parseWithConfig(fs, []string{"--config", p, "--log-level", "debug", "--port=6433"}); err != nil {
		t.Fatal(err)
	}
	want := serveFlags{nodeID: "n2", dataDir: "/var/lib/mcpd", bind: "10.0.0.2", port: 6433, authNone: true, logLevel: "debug",
		heartbeat: 750 * time.Millisecond, election: 2 * time.Second,
		peers: "n1=10.0.0.1:4438,n2=10.0.0.2:4438,n3=10.0.0.3:4438"}
	if f.nodeID != want.nodeID || f.dataDir != want.dataDir || f.bind != want.bind || f.port != want.port ||
		f.authNone != want.authNone || f.logLevel != want.logLevel || f.heartbeat != want.heartbeat ||
		f.election != want.election || f.peers != want.peers {
		t.Fatalf("flags %+v\nwant  %+v", f, want)
	}
}

func Test_Config_RefusesWhatIsNotAFlag(t *testing.T) {
	for body, want := range map[string]string{
		`nod-id = "n1"`:             `"nod-id" is not a flag`,
		`port = "x"`:                "port",
		"port = 1\n[peers]\nn1 = 5": "peers.n1",
		`config = "other.toml"`:     `"config" is not a flag`,
		`port = `:                   "config",
	} {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.Int("port", 0, "")
		fs.String("node-id", "", "")
		fs.String("peers", "", "")
		err := parseWithConfig(fs, []string{"--config", writeConfig(t, body)})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error about %s", body, err, want)
		}
	}
}
