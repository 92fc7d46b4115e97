package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/mcpd/mcpd/transport"
)

// runQueue is `mcpd queue list|peek`: the queues and their messages, as
// the node's admin API reads them from its applied state.
func runQueue(args []string) error { return queueCmd(args, os.Stdout) }

func queueCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "peek") {
		return &usageError{"expected 'mcpd queue list' or 'mcpd queue peek NAME [--limit N]'"}
	}
	fs := flag.NewFlagSet("queue "+args[0], flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if args[0] == "list" {
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		c, err := af.client()
		if err != nil {
			return err
		}
		var qs []transport.AdminQueue
		if err := c.do("GET", "/v1/queues", nil, &qs); err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(qs)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "QUEUE\tREADY\tINFLIGHT\tDELAYED\tDEAD-LETTERED\tCONSUMERS\tENQUEUED")
		for _, q := range qs {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\n", q.Name, q.Ready, q.Inflight, q.Delayed, q.Dead, q.Consumers, q.Enqueued)
		}
		return tw.Flush()
	}
	limit := fs.Int("limit", 20, "show the oldest N messages (1 to 1000)")
	name, c, err := namedAdmin(fs, &af, args[1:])
	if err != nil {
		return err
	}
	var msgs []transport.AdminMessage
	if err := c.do("GET", "/v1/queues/"+url.PathEscape(name)+"/messages?limit="+strconv.Itoa(*limit), nil, &msgs); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(msgs)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tSTATE\tATTEMPTS\tENQUEUED\tHOLDER\tDEAD LETTER OF\tENVELOPE")
	for _, m := range msgs {
		dead := "-"
		if m.Dead != nil {
			dead = fmt.Sprintf("%s/%d: %s", m.Dead.Queue, m.Dead.Seq, m.Dead.Reason)
		}
		var compact bytes.Buffer
		env := string(m.Envelope)
		if json.Compact(&compact, m.Envelope) == nil {
			env = compact.String()
		}
		if len(env) > 80 {
			env = env[:77] + "..."
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t%s\n", m.Seq, m.State, m.Attempts, msTime(m.Enqueued), dash(m.Holder), dead, env)
	}
	return tw.Flush()
}
