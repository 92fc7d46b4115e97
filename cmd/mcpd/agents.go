package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/mcpd/mcpd/client"
)

const agentsUsage = "usage: mcpd agents [--json] [--server URL[,URL]] [--ca FILE] [--cred FILE | --agent NAME]"

// runAgents handles "mcpd agents": the agents that registered
// capabilities, online or not, with their load, as an agent sees them.
func runAgents(args []string) error { return agentsCmd(args, os.Stdout) }

func agentsCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("agents", flag.ContinueOnError)
	var cf connFlags
	cf.register(fs, "cli", 30*time.Second, "how long to wait for the answer")
	asJSON := fs.Bool("json", false, "print the list as JSON")
	setUsage(fs, agentsUsage)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	return withClient(&cf, func(ctx context.Context, c *client.Client) error {
		list, err := c.Agents(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, map[string]any{"agents": list})
		}
		return printAgents(stdout, list)
	})
}

func printAgents(w io.Writer, list []client.AgentInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tONLINE\tNODES\tCAPABILITIES (INFLIGHT/MAX)\tRECENT OK/FAILED")
	for _, a := range list {
		online := "yes"
		if !a.Online {
			online = "no"
			if a.OfflineSince > 0 {
				online = "no, since " + msTime(a.OfflineSince)
			}
		}
		var caps []string
		for _, k := range a.Capabilities {
			if k.MaxInflight == 0 {
				caps = append(caps, fmt.Sprintf("%s %d (withdrawn)", k.Name, k.Inflight))
				continue
			}
			caps = append(caps, fmt.Sprintf("%s %d/%d", k.Name, k.Inflight, k.MaxInflight))
		}
		nodes := strings.Join(a.Nodes, ",")
		if nodes == "" {
			nodes = "-"
		}
		capText := strings.Join(caps, ", ")
		if capText == "" {
			capText = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\n", a.Name, online, nodes, capText, a.RecentSucceeded, a.RecentFailed)
	}
	return tw.Flush()
}

// withClient connects with the flags and runs fn with a context that
// ends on Ctrl-C or after --timeout.
func withClient(cf *connFlags, fn func(ctx context.Context, c *client.Client) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	rctx, cancel := cf.withTimeout(ctx)
	defer cancel()
	if err := fn(rctx, c); err != nil {
		return fmt.Errorf("%w%s", err, delegationHint(err, cf.cred != ""))
	}
	return nil
}

// delegationHint is errHint for the delegation commands.
func delegationHint(err error, cred bool) string {
	if client.IsCode(err, "forbidden") {
		return "\nhint: the agent's ACL does not allow it ('mcpd agent show NAME': allow-submit, allow-register), or the task is not its own (only its origin or submitter cancels it; only agents that took part read it)"
	}
	return errHint(err, cred)
}

// printJSON writes v as one JSON document on one line, and a newline.
func printJSON(w io.Writer, v any) error {
	return encodeJSON(w, v, false)
}

// encodeJSON writes v as JSON, indented or on one line, and a newline,
// with <, > and & as themselves: the output is for a terminal or a
// script, not for an HTML page.
func encodeJSON(w io.Writer, v any, indent bool) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if indent {
		enc.SetIndent("", "  ")
	}
	if err := enc.Encode(v); err != nil {
		return err
	}
	// SetEscapeHTML does not reach JSON that v holds already marshalled
	// (the node's answers in json.RawMessage, MarshalJSON methods).
	_, err := w.Write(unescapeHTML(b.Bytes()))
	return err
}

// printRawJSON writes JSON as the node's admin API answered it, with
// <, > and & unescaped as printJSON has them, and a final newline.
func printRawJSON(w io.Writer, raw []byte) error {
	out := unescapeHTML(bytes.TrimRight(raw, " \t\r\n"))
	_, err := w.Write(append(out[:len(out):len(out)], '\n'))
	return err
}

// unescapeHTML turns the \u003c, \u003e and \u0026 escapes of Go's JSON
// encoder back into <, > and &. Any other escape is copied as it is, with
// the character it escapes: a \\ followed by u003c stays.
func unescapeHTML(b []byte) []byte {
	if !bytes.Contains(b, []byte(`\u00`)) {
		return b
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' || i+1 == len(b) {
			out = append(out, b[i])
			continue
		}
		if b[i+1] == 'u' && i+6 <= len(b) {
			var c byte
			switch strings.ToLower(string(b[i+2 : i+6])) {
			case "003c":
				c = '<'
			case "003e":
				c = '>'
			case "0026":
				c = '&'
			}
			if c != 0 {
				out = append(out, c)
				i += 5
				continue
			}
		}
		out = append(out, b[i], b[i+1])
		i++
	}
	return out
}
