package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/mcpd/mcpd/audit"
)

// auditPage is how many entries one request for a running node's log asks.
const auditPage = 5000

// fetchAudit returns the entries after seq after from a running node.
func fetchAudit(c *adminClient, after uint64) ([]audit.Record, error) {
	raw, err := c.doRaw("GET", "/v1/audit/entries?after="+strconv.FormatUint(after, 10)+"&limit="+strconv.Itoa(auditPage), nil)
	if err != nil {
		return nil, err
	}
	var out []audit.Record
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("the node sent an entry that does not parse: %w", err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

// nodeAuditKey returns the audit key to check a running node's
// checkpoints with: --key if given, else the one the node publishes
// (which proves the chain consistent, not who signed it).
func nodeAuditKey(c *adminClient, keyArg string) (ed25519.PublicKey, bool, error) {
	if keyArg != "" {
		pub, err := loadAuditKey(keyArg)
		if err != nil {
			return nil, false, &usageError{err.Error()}
		}
		return pub, true, nil
	}
	var k struct {
		PublicKey string `json:"public_key"`
	}
	if err := c.do("GET", "/v1/audit/key", nil, &k); err != nil {
		if isAdminCode(err, "not_found") {
			return nil, false, nil
		}
		return nil, false, err
	}
	pub, err := audit.ParsePublicKey(k.PublicKey)
	return pub, false, err
}

// verifyOnline checks a running node's whole log here, page by page:
// nothing the node says about its own log is taken on trust but the key
// when --key is not given.
func verifyOnline(af *adminFlags, keyArg string) (audit.Report, error) {
	c, err := af.client()
	if err != nil {
		return audit.Report{}, err
	}
	pub, given, err := nodeAuditKey(c, keyArg)
	if err != nil {
		return audit.Report{}, err
	}
	if pub != nil && !given {
		fmt.Fprintln(os.Stderr, "checking checkpoints against the key the node publishes; pass --key (mcpd audit key) to check who signed them")
	}
	chain := audit.NewChain(pub)
	var last uint64
	for {
		recs, err := fetchAudit(c, last)
		if err != nil {
			return audit.Report{}, err
		}
		for i := range recs {
			if last == 0 && recs[i].Seq > 1 {
				// A pruned log: it starts after its base, and one of
				// its entries must record the prune that reached it.
				chain.From(audit.Head{Seq: recs[i].Seq - 1, Hash: recs[i].Prev})
			}
			if !chain.Add(&recs[i]) {
				return chain.Report(), nil
			}
			last = recs[i].Seq
		}
		if len(recs) < auditPage {
			return chain.Report(), nil
		}
	}
}

// exportOnline writes a running node's entries after since as JSON lines.
func exportOnline(af *adminFlags, since uint64, w io.Writer) error {
	c, err := af.client()
	if err != nil {
		return err
	}
	for {
		recs, err := fetchAudit(c, since)
		if err != nil {
			return err
		}
		for i := range recs {
			if err := printJSON(w, &recs[i]); err != nil {
				return err
			}
			since = recs[i].Seq
		}
		if len(recs) < auditPage {
			return nil
		}
	}
}

// auditTail handles "mcpd audit tail": the running node's entries as JSON
// lines as they are written, each checked against the one before it.
func auditTail(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit tail", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	since := fs.String("since", "", "start after this seq (default: the last 10 entries)")
	every := fs.Duration("poll", 500*time.Millisecond, "how often to ask the node for new entries")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var after uint64
	if *since != "" {
		if after, err = strconv.ParseUint(*since, 10, 64); err != nil {
			return &usageError{fmt.Sprintf("--since %q is not a sequence number", *since)}
		}
	} else {
		var head struct {
			Seq uint64 `json:"seq"`
		}
		if err := c.do("GET", "/v1/audit/head", nil, &head); err != nil {
			return err
		}
		after = max(head.Seq, 10) - 10
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	chain := audit.NewChain(nil)
	for {
		recs, err := fetchAudit(c, after)
		if err != nil {
			return err
		}
		for i := range recs {
			if !chain.Add(&recs[i]) {
				return fmt.Errorf("the node's log does not verify: %v", chain.Report())
			}
			if err := printJSON(stdout, &recs[i]); err != nil {
				return err
			}
			after = recs[i].Seq
		}
		if len(recs) == auditPage {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*every):
		}
	}
}
