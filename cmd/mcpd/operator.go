package main

import (
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/mcpd/mcpd/transport"
)

// runOperator is `mcpd operator invite|list|remove`: the humans of the web
// UI (docs/ops/ui.md). An invite prints a one-time code; the operator
// redeems it in the UI with a new passkey.
func runOperator(args []string) error { return operatorCmd(args, os.Stdout) }

func operatorCmd(args []string, stdout io.Writer) error {
	if len(args) > 0 && isHelp(args[0]) {
		return groupUsage(operatorHelp)
	}
	if len(args) == 0 || (args[0] != "invite" && args[0] != "list" && args[0] != "remove") {
		return &usageError{"expected 'mcpd operator invite NAME [--ttl 24h]', 'mcpd operator list' or 'mcpd operator remove NAME'"}
	}
	fs := flag.NewFlagSet("operator "+args[0], flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	switch args[0] {
	case "invite":
		ttl := fs.Duration("ttl", transport.DefaultInviteTTL, "how long the code may be redeemed (1m to 168h)")
		name, c, err := namedAdmin(fs, &af, args[1:], "operator NAME")
		if err != nil {
			return err
		}
		var inv transport.AdminInvite
		if err := c.do("POST", "/v1/operators/invites", transport.AdminInviteRequest{Name: name, TTL: ttl.String()}, &inv); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, inv)
		}
		fmt.Fprintf(stdout, "invite code for %s (shown once, valid until %s):\n\n    %s\n\n", inv.Name, msTime(inv.ExpiresMs), inv.Code)
		if len(inv.EnrollURL) > 0 {
			fmt.Fprintf(stdout, "open %s and enter the code to enroll a passkey\n", inv.EnrollURL[0])
		} else {
			fmt.Fprintln(stdout, "this node serves no web UI (--ui): enroll at the UI of a node that does")
		}
		return nil
	case "remove":
		name, c, err := namedAdmin(fs, &af, args[1:], "operator NAME")
		if err != nil {
			return err
		}
		if err := c.do("DELETE", "/v1/operators/"+url.PathEscape(name), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "operator %s removed, with their passkeys, sessions and invites\n", name)
		return nil
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var res transport.AdminOperators
	if err := c.do("GET", "/v1/operators", nil, &res); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, res)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "OPERATOR\tPASSKEYS\tINVITED BY\tCREATED\tLAST LOGIN")
	for _, op := range res.Operators {
		last := "-"
		if op.LastLogin > 0 {
			last = msTime(op.LastLogin)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", op.Name, len(op.Creds), dash(op.InvitedBy), msTime(op.Created), last)
	}
	for _, in := range res.Invites {
		fmt.Fprintf(tw, "%s\t(invited, expires in %s)\t%s\t%s\t-\n", in.Name, time.Until(time.UnixMilli(in.Expires)).Round(time.Minute), in.By, msTime(in.Created))
	}
	return tw.Flush()
}
