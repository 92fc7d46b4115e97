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
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/mcpd/mcpd/audit"
)

// searchPage is the most entries one search request asks for (the
// node's limit).
const searchPage = 10000

// auditSearch handles "mcpd audit search": a running node's audit
// entries that match filters, through GET /v1/audit/search, following
// its cursor until --limit entries or the end of the chain.
func auditSearch(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit search", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	v := url.Values{}
	multi := func(name, usage string) {
		fs.Func(name, usage+" (repeat for any of several)", func(s string) error {
			v.Add(name, s)
			return nil
		})
	}
	multi("actor", "entries of this actor: an agent, operator:NAME, ...; a trailing * matches a prefix")
	multi("type", "entries of this kind: enqueue, ack, denied, task.*, ...")
	multi("outcome", "entries with this outcome: ok or an error code")
	multi("id", "entries naming this id: a message QUEUE/SEQ (or SEQ with --queue), a task, an agent, an envelope id, ...")
	queue := fs.String("queue", "", "entries about this queue: enqueues, consumers, settles of its messages, denials")
	since := fs.String("since", "", "entries at or after this time: RFC 3339, unix ms, or a duration ago (15m, 24h)")
	until := fs.String("until", "", "entries before this time, as --since")
	grep := fs.String("grep", "", "entries whose JSON holds this text, ignoring case")
	after := fs.Uint64("after", 0, "start past this seq in the search's order (a previous search's cursor)")
	limit := fs.Int("limit", 100, "print at most N entries; 0 for all")
	desc := fs.Bool("desc", false, "newest first")
	asJSON := fs.Bool("json", false, "print the entries as JSON lines, as 'mcpd audit export' does")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	if *limit < 0 {
		return &usageError{"--limit must be 0 (all) or more"}
	}
	now := time.Now()
	for name, s := range map[string]string{"since": *since, "until": *until} {
		t, err := searchTime(s, now)
		if err != nil {
			return &usageError{fmt.Sprintf("--%s: %v", name, err)}
		}
		if t != "" {
			v.Set(name, t)
		}
	}
	if *queue != "" {
		v.Set("queue", *queue)
	}
	if *grep != "" {
		v.Set("q", *grep)
	}
	if *desc {
		v.Set("order", "desc")
	}
	c, err := af.client()
	if err != nil {
		return err
	}

	var tw *tabwriter.Writer
	if !*asJSON {
		tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTIME\tTYPE\tACTOR\tSUBJECT\tRESULT")
	}
	cursor, printed := *after, 0
	for {
		n := searchPage
		if *limit > 0 {
			n = min(n, *limit-printed)
		}
		v.Set("after", strconv.FormatUint(cursor, 10))
		v.Set("limit", strconv.Itoa(n))
		var page struct {
			Entries []json.RawMessage `json:"entries"`
			Next    uint64            `json:"next"`
		}
		if err := c.do("GET", "/v1/audit/search?"+v.Encode(), nil, &page); err != nil {
			return err
		}
		for _, raw := range page.Entries {
			if *asJSON {
				if err := printRawJSON(stdout, compactLine(raw)); err != nil {
					return err
				}
			} else {
				var r audit.Record
				if err := json.Unmarshal(raw, &r); err != nil {
					return fmt.Errorf("the node sent an entry that does not parse: %w", err)
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Seq, msClock(r.Time), cell(r.Kind), cell(r.Actor), cell(r.Subject), cell(r.Outcome))
			}
		}
		printed += len(page.Entries)
		if page.Next == 0 {
			break
		}
		cursor = page.Next
		if *limit > 0 && printed >= *limit {
			fmt.Fprintf(os.Stderr, "stopped at --limit %d; more may follow: --after %d\n", *limit, cursor)
			break
		}
	}
	if tw != nil {
		return tw.Flush()
	}
	return nil
}

// searchTime turns a --since or --until value into the node's form: a
// duration ago becomes unix ms, RFC 3339 and unix ms go as they are.
func searchTime(s string, now time.Time) (string, error) {
	if s == "" || strings.Trim(s, "0123456789") == "" {
		return s, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return "", fmt.Errorf("the duration %q must be positive", s)
		}
		return strconv.FormatInt(now.Add(-d).UnixMilli(), 10), nil
	}
	if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
		return "", fmt.Errorf("%q is not an RFC 3339 time (2006-01-02T15:04:05Z), unix ms or a duration (15m)", s)
	}
	return s, nil
}

// cell is a field as a table shows it: "-" for nothing, quoted when it
// holds a control character.
func cell(s string) string {
	if strings.ContainsFunc(s, unicode.IsControl) {
		return strconv.Quote(s)
	}
	return dash(s)
}

// compactLine is raw without the indentation of the admin API's answers.
func compactLine(raw json.RawMessage) []byte {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}
