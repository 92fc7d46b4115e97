package main

import (
	"errors"
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

// The UI's flags from a file: "ui = true" counts as given, so --dev's
// default does not override "ui = false" either.
func Test_Config_UIFlags(t *testing.T) {
	for _, tc := range []struct {
		file string
		dev  bool
		want bool
	}{
		{"ui = true\nui-origin = \"https://n1.mcpd.example.com:4436\"\nui-rp-id = \"mcpd.example.com\"\n", false, true},
		{"ui = false\n", true, false},
		{"", true, true},
		{"", false, false},
	} {
		var u uiFlags
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		u.register(fs)
		if err := parseWithConfig(fs, []string{"--config", writeConfig(t, tc.file)}); err != nil {
			t.Fatal(err)
		}
		u.resolve(fs, tc.dev, 4436)
		if u.on != tc.want {
			t.Errorf("%q with dev=%v: ui %v, want %v", tc.file, tc.dev, u.on, tc.want)
		}
		origins, err := u.originList(4436)
		if err != nil || len(origins) != 1 || (tc.file == "" && origins[0] != "https://localhost:4436") {
			t.Errorf("%q: origins %v %v", tc.file, origins, err)
		}
	}
}

// --task-retention: a week by default, 0 keeps ended tasks forever, and
// less than an hour is refused.
func Test_TaskRetentionFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want time.Duration
		ok   bool
	}{
		{nil, 7 * 24 * time.Hour, true},
		{[]string{"--task-retention", "0"}, 0, true},
		{[]string{"--task-retention", "1h"}, time.Hour, true},
		{[]string{"--task-retention", "59m"}, 0, false},
	} {
		var tf taskFlags
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		tf.register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		err := tf.check()
		var ue *usageError
		switch {
		case tc.ok && (err != nil || tf.retention != tc.want):
			t.Errorf("%v: retention %v, %v; want %v", tc.args, tf.retention, err, tc.want)
		case !tc.ok && !errors.As(err, &ue):
			t.Errorf("%v: %v, want a usage error", tc.args, err)
		}
	}
}
