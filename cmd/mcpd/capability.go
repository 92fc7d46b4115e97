package main

import (
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"

	"github.com/mcpd/mcpd/transport"
)

// runCapability handles "mcpd capability sensitive|plain NAME": whether
// the tasks of a capability wait for an operator's approval.
func runCapability(args []string) error { return capabilityCmd(args, os.Stdout) }

func capabilityCmd(args []string, stdout io.Writer) error {
	if len(args) > 0 && isHelp(args[0]) {
		return groupUsage(capabilityHelp)
	}
	if len(args) > 0 && args[0] == "list" {
		return capabilityList(args[1:], stdout)
	}
	if len(args) == 0 || (args[0] != "sensitive" && args[0] != "plain") {
		return &usageError{"expected 'mcpd capability sensitive NAME', 'mcpd capability plain NAME' or 'mcpd capability list'"}
	}
	on := args[0] == "sensitive"
	fs := flag.NewFlagSet("capability "+args[0], flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	setUsage(fs, "usage: mcpd capability "+args[0]+" NAME [--data-dir DIR | --admin-socket PATH | --admin-url URL --admin-token-file FILE]")
	name, err := parseOne(fs, args[1:], "capability NAME")
	if err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	method := "PUT"
	if !on {
		method = "DELETE"
	}
	var res transport.AdminSensitive
	if err := c.do(method, "/v1/capabilities/"+url.PathEscape(name)+"/sensitive", nil, &res); err != nil {
		return err
	}
	if res.Sensitive {
		fmt.Fprintf(stdout, "capability %s is sensitive: its new tasks wait for an operator's approval ('mcpd task approve ID')\n", res.Capability)
	} else {
		fmt.Fprintf(stdout, "capability %s is plain: its tasks run without approval (tasks already held still wait)\n", res.Capability)
	}
	return nil
}

// capabilityList prints the capabilities marked sensitive.
func capabilityList(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("capability list", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var caps map[string]string
	if err := c.do("GET", "/v1/capabilities/sensitive", nil, &caps); err != nil {
		return err
	}
	names := make([]string, 0, len(caps))
	for n := range caps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(stdout, "%s\tsensitive (marked by %s)\n", n, caps[n])
	}
	return nil
}
