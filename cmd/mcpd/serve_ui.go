package main

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// uiFlags configure the operators' web UI on the admin port
// (docs/ops/ui.md).
type uiFlags struct {
	on         bool
	set        bool // --ui given (on the command line or in --config)
	origins    string
	rpID       string
	sessionTTL time.Duration
}

func (u *uiFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&u.on, "ui", false, "serve the operators' web UI (passkey login) on --admin-port over HTTPS (default on with --dev)")
	fs.StringVar(&u.origins, "ui-origin", "", "the URLs operators open the UI at, comma-separated, e.g. https://mcpd.example.com:4436 (default https://localhost:ADMIN-PORT)")
	fs.StringVar(&u.rpID, "ui-rp-id", "", "the WebAuthn relying party id passkeys are bound to: a domain every --ui-origin host is or ends with, the same on every node (default the first origin's host)")
	fs.DurationVar(&u.sessionTTL, "ui-session-ttl", 12*time.Hour, "how long an operator's UI login lasts")
}

// resolve settles the UI's defaults once the flags are parsed.
func (u *uiFlags) resolve(fs *flag.FlagSet, dev bool, adminPort int) {
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "ui" {
			u.set = true
		}
	})
	if !u.set && dev && adminPort != 0 {
		u.on = true
	}
}

// originList is --ui-origin as a list, with its default.
func (u *uiFlags) originList(adminPort int) ([]string, error) {
	if strings.TrimSpace(u.origins) == "" {
		return []string{"https://localhost:" + strconv.Itoa(adminPort)}, nil
	}
	var out []string
	for _, o := range strings.Split(u.origins, ",") {
		if o = strings.TrimSuffix(strings.TrimSpace(o), "/"); o != "" {
			out = append(out, o)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--ui-origin: no origin given")
	}
	return out, nil
}
