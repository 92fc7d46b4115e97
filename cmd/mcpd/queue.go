package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mcpd/mcpd/transport"
)

// runQueue is `mcpd queue list|peek|redrive|delete`: the queues and
// their messages, as the node's admin API reads them from its applied
// state, and the operator's two changes to them.
func runQueue(args []string) error { return queueCmd(args, os.Stdout) }

const queueUsage = "expected 'mcpd queue list', 'mcpd queue peek NAME [--limit N] [--timeline]', " +
	"'mcpd queue redrive DLQ (--seq N ... | --all [--limit N]) [--to QUEUE]' or 'mcpd queue delete QUEUE SEQ [--force]'"

func queueCmd(args []string, stdout io.Writer) error {
	switch {
	case len(args) > 0 && isHelp(args[0]):
		return groupUsage(queueHelp)
	case len(args) > 0 && args[0] == "redrive":
		return queueRedrive(args[1:], stdout)
	case len(args) > 0 && args[0] == "delete":
		return queueDelete(args[1:], stdout)
	case len(args) == 0 || (args[0] != "list" && args[0] != "peek"):
		return &usageError{queueUsage}
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
			return printJSON(stdout, qs)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "QUEUE\tREADY\tINFLIGHT\tDELAYED\tDEAD-LETTERED\tCONSUMERS\tENQUEUED")
		for _, q := range qs {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\n", q.Name, q.Ready, q.Inflight, q.Delayed, q.Dead, q.Consumers, q.Enqueued)
		}
		return tw.Flush()
	}
	limit := fs.Int("limit", 20, "show the oldest N messages (1 to 1000)")
	timeline := fs.Bool("timeline", false, "show under each message what happened to it: enqueue, deliveries, nacks, rejects, lapsed leases, dead-lettering, redrives")
	name, c, err := namedAdmin(fs, &af, args[1:], "queue NAME")
	if err != nil {
		return err
	}
	var msgs []transport.AdminMessage
	if err := c.do("GET", "/v1/queues/"+url.PathEscape(name)+"/messages?limit="+strconv.Itoa(*limit), nil, &msgs); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, msgs)
	}
	var table bytes.Buffer
	tw := tabwriter.NewWriter(&table, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tSTATE\tATTEMPTS\tENQUEUED\tHOLDER\tDEAD LETTER OF\tENVELOPE")
	for _, m := range msgs {
		dead := "-"
		if m.Dead != nil {
			dead = fmt.Sprintf("%s/%d: %s", m.Dead.Queue, m.Dead.Seq, oneLine(m.Dead.Reason))
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
	if err := tw.Flush(); err != nil {
		return err
	}
	if !*timeline {
		_, err := table.WriteTo(stdout)
		return err
	}
	// The rows stay aligned as one table; each one's events follow it.
	rows := strings.SplitAfter(table.String(), "\n")
	fmt.Fprint(stdout, rows[0])
	for i, m := range msgs {
		fmt.Fprint(stdout, rows[i+1])
		if err := printTimeline(stdout, m); err != nil {
			return err
		}
	}
	return nil
}

// oneLine is client text (a reason, a name) as one table cell: line
// breaks and tabs would split the row, and --timeline matches rows to
// messages by position.
var oneLine = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ", "\t", " ").Replace

// printTimeline writes a message's events, indented, one a line: time,
// event, attempt, who (and the consumer of a delivery), detail.
func printTimeline(w io.Writer, m transport.AdminMessage) error {
	if len(m.Timeline) == 0 {
		_, err := fmt.Fprintln(w, "    (no events: stored before timelines were kept)")
		return err
	}
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for i, e := range m.Timeline {
		if i == 1 && m.TimelineDropped > 0 {
			fmt.Fprintf(tw, "    ...\t%d event%s not kept\t\t\t\n", m.TimelineDropped, pluralS(m.TimelineDropped))
		}
		attempt := ""
		if e.Attempt > 0 {
			attempt = "attempt " + strconv.Itoa(e.Attempt)
		}
		who := oneLine(e.Who)
		if e.Consumer != 0 {
			who += fmt.Sprintf(" (consumer %d)", e.Consumer)
		}
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%s\n", msClock(e.AtMs), e.Event, attempt, who, oneLine(e.Detail))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, line := range strings.SplitAfter(b.String(), "\n") {
		if line != "" {
			fmt.Fprintln(w, strings.TrimRight(line, " \n"))
		}
	}
	return nil
}

// queueRedrive is `mcpd queue redrive DLQ (--seq N ... | --all) [--to
// QUEUE]`: dead letters go back to the queues they died in (or to
// QUEUE) as new messages, with their attempts starting over. --seq names
// exactly the messages to move (all or none move); --all moves every
// dead letter there is, leased ones passed over.
func queueRedrive(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("queue redrive", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	var seqs seqList
	fs.Var(&seqs, "seq", "a dead letter to move, by its seq in the dead-letter queue (repeatable, or 3,7,9)")
	all := fs.Bool("all", false, "move every dead letter of the queue (one already leased by a consumer stays)")
	limit := fs.Int("limit", 0, "with --all: move at most N (default: every one)")
	to := fs.String("to", "", "move them to this queue instead of the queues they died in")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) != 1:
		return &usageError{"expected 'mcpd queue redrive DLQ (--seq N ... | --all) [--to QUEUE]'"}
	case len(seqs) > 0 && *all, len(seqs) == 0 && !*all:
		return &usageError{"name the dead letters with --seq, or move them all with --all"}
	case *limit != 0 && !*all:
		return &usageError{"--limit goes with --all"}
	case *limit < 0:
		return &usageError{"--limit must be positive"}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var res transport.AdminRedrive
	req := transport.AdminRedriveRequest{Seqs: seqs, To: *to, Limit: *limit}
	if err := c.do("POST", "/v1/queues/"+url.PathEscape(pos[0])+"/redrive", req, &res); err != nil {
		if head, tail, ok := leaseConflict(err, time.Now()); ok {
			return &adminError{code: "conflict", msg: head + tail}
		}
		return err
	}
	if *asJSON {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "moved %d dead letter%s of %s\n", res.Moved, pluralS(res.Moved), pos[0])
	if res.Moved == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tTO")
	for _, m := range res.Messages {
		fmt.Fprintf(tw, "%s/%d\t%s/%d\n", pos[0], m.From, m.Queue, m.Seq)
	}
	return tw.Flush()
}

// queueDelete is `mcpd queue delete QUEUE SEQ [--force]`: one message
// goes for good, whatever its state; one a consumer holds only with
// --force (its lease ends, and the consumer's ack is refused).
func queueDelete(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("queue delete", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	force := fs.Bool("force", false, "delete it even while a consumer holds it: its lease ends, and the consumer's ack gets not_found")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return &usageError{"expected 'mcpd queue delete QUEUE SEQ [--force]'"}
	}
	seq, err := strconv.ParseUint(pos[1], 10, 64)
	if err != nil || seq == 0 {
		return &usageError{fmt.Sprintf("%q is not a seq (the SEQ column of 'mcpd queue peek')", pos[1])}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	path := "/v1/queues/" + url.PathEscape(pos[0]) + "/messages/" + strconv.FormatUint(seq, 10)
	if *force {
		path += "?force=true"
	}
	var res transport.AdminDeleted
	if err := c.do("DELETE", path, nil, &res); err != nil {
		if head, _, ok := leaseConflict(err, time.Now()); ok && !*force {
			// The node's own advice ("force the delete") is replaced by
			// the one line that names the flag.
			return fmt.Errorf("%w\n%s", &adminError{code: "conflict", msg: head}, deleteForceHint)
		}
		if isAdminCode(err, "conflict") && !*force {
			return fmt.Errorf("%w\n%s", err, deleteForceHint)
		}
		return err
	}
	if *asJSON {
		return printJSON(stdout, res)
	}
	what := fmt.Sprintf("%s, %d attempt%s", res.State, res.Attempts, pluralS(res.Attempts))
	if res.Holder != "" {
		what += ", its lease by " + res.Holder + " ended"
	}
	if res.Dead != nil {
		what += fmt.Sprintf(", a dead letter of %s/%d: %s", res.Dead.Queue, res.Dead.Seq, res.Dead.Reason)
	}
	_, err = fmt.Fprintf(stdout, "deleted %s/%d (%s)\n", res.Queue, res.Seq, what)
	return err
}

// seqList is a repeatable flag of seqs, each value one seq or several
// separated by commas.
type seqList []uint64

func (s *seqList) String() string {
	parts := make([]string, len(*s))
	for i, v := range *s {
		parts[i] = strconv.FormatUint(v, 10)
	}
	return strings.Join(parts, ",")
}

func (s *seqList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 64)
		if err != nil || n == 0 {
			return fmt.Errorf("%q is not a seq", p)
		}
		*s = append(*s, n)
	}
	return nil
}

// parseInterleaved parses flags that may come before, between or after
// the positional arguments, and returns those.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// pluralS is "s" unless n is 1.
func pluralS(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// deleteForceHint follows queue delete's refusal of a leased message.
const deleteForceHint = "a consumer holds it: wait for its ack or for its lease to end, or delete it now with --force (the consumer's ack then fails)"

// leasedRE matches the node's answer that a message is leased to a
// consumer (to queue delete and redrive): the lease's end in unix
// milliseconds, then the node's advice.
var leasedRE = regexp.MustCompile(`^(.+ is leased to .+ until )(\d+)(: .+)$`)

// leaseConflict recognises the node's conflict answer about a leased
// message and returns it with the lease's end as a time: head up to and
// with that time, tail the node's advice after it (": wait ..."). ok is
// false for any other error, or a number that is no plausible time.
func leaseConflict(err error, now time.Time) (head, tail string, ok bool) {
	var ae *adminError
	if !errors.As(err, &ae) || ae.code != "conflict" {
		return "", "", false
	}
	m := leasedRE.FindStringSubmatch(ae.msg)
	if m == nil {
		return "", "", false
	}
	ms, perr := strconv.ParseInt(m[2], 10, 64)
	if perr != nil || ms < 1e12 || ms >= 1e13 { // 2001 to 2286
		return "", "", false
	}
	end := msTime(ms)
	if d := time.UnixMilli(ms).Sub(now).Round(time.Second); d > 0 {
		end += " (in " + d.String() + ")"
	}
	return m[1] + end, m[3], true
}
