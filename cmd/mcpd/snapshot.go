package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/snapshot"
	"github.com/mcpd/mcpd/transport"
)

// runSnapshot handles "mcpd snapshot save|inspect|restore": backups of a
// running cluster's state and their restore (docs/ops/snapshots.md).
func runSnapshot(args []string) error {
	if len(args) == 0 {
		return &usageError{"expected 'mcpd snapshot save|inspect|restore ...'"}
	}
	switch args[0] {
	case "save":
		return snapshotSave(args[1:], os.Stdout, os.Stderr)
	case "inspect":
		return snapshotInspect(args[1:], os.Stdout)
	case "restore":
		return snapshotRestore(args[1:], os.Stdout)
	case "-h", "-help", "--help", "help":
		return groupUsage(snapshotHelp)
	}
	return &usageError{fmt.Sprintf("unknown snapshot command %q: save, inspect or restore", args[0])}
}

// parseWithFile parses flags given before or after the one FILE argument.
func parseWithFile(fs *flag.FlagSet, args []string) (string, error) {
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() == 0 {
		return "", &usageError{"expected a snapshot FILE"}
	}
	file := fs.Arg(0)
	if err := fs.Parse(fs.Args()[1:]); err != nil {
		return "", err
	}
	if fs.NArg() > 0 {
		return "", &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	return file, nil
}

func snapshotSave(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("snapshot save", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	out := fs.String("o", "", "the file to write (required); written whole or not at all")
	quiet := fs.Bool("q", false, "no progress bar")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return &usageError{"-o FILE is required"}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodGet, c.base+"/v1/snapshot", nil)
	if err != nil {
		return err
	}
	resp, err := c.stream(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// A temporary file beside FILE, renamed once complete and checked.
	tmp, err := os.CreateTemp(filepath.Dir(*out), "."+filepath.Base(*out)+".part-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	var w io.Writer = tmp
	var bar *progress
	if !*quiet && isTerminal(stderr) {
		bar = &progress{w: stderr, total: resp.ContentLength, label: "saving"}
		w = io.MultiWriter(tmp, bar)
	}
	n, err := io.Copy(w, resp.Body)
	bar.done()
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("the node sent %d of %d bytes", n, resp.ContentLength)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	res, err := snapshot.Check(tmp.Name(), "", nil, "")
	if err != nil {
		return fmt.Errorf("the snapshot received does not check, not written: %w", err)
	}
	if err := os.Rename(tmp.Name(), *out); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(*out)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	h := res.Header
	fmt.Fprintf(stdout, "saved %s: index %d, %d messages in %d queues, %d leases, %d tasks, %d agents, %d schedules, audit head %d %s, %d bytes\n",
		*out, h.Index, h.Counts.Messages, h.Counts.Queues, h.Counts.Leases, h.Counts.Tasks, h.Counts.Agents, h.Counts.Schedules,
		h.AuditHead.Seq, h.AuditHead.Hash, n)
	return nil
}

func snapshotInspect(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("snapshot inspect", flag.ContinueOnError)
	keyArg := fs.String("key", "", "the cluster's audit public key, to check who signed the audit checkpoints ('mcpd audit key' prints it)")
	asJSON := fs.Bool("json", false, "print the header and the verdict as JSON")
	file, err := parseWithFile(fs, args)
	if err != nil {
		return err
	}
	var pub ed25519.PublicKey
	if *keyArg != "" {
		if pub, err = loadAuditKey(*keyArg); err != nil {
			return &usageError{err.Error()}
		}
	}
	res, cerr := snapshot.Check(file, "", pub, "")
	if res == nil {
		return cerr
	}
	if *asJSON {
		out := struct {
			File   string           `json:"file"`
			Header *snapshot.Header `json:"header"`
			OK     bool             `json:"ok"`
			Error  string           `json:"error,omitempty"`
			Audit  any              `json:"audit,omitempty"`
		}{File: file, Header: res.Header, OK: cerr == nil}
		if cerr != nil {
			out.Error = cerr.Error()
		}
		if res.Audit.Entries > 0 || !res.Audit.OK {
			out.Audit = res.Audit
		}
		if err := encodeJSON(stdout, out, true); err != nil {
			return err
		}
	} else {
		printHeader(stdout, file, res.Header)
		if cerr == nil {
			fmt.Fprintf(stdout, "checksum:   ok (SHA-256 of the body)\n")
			fmt.Fprintf(stdout, "audit:      %s\n", res.Audit)
		}
	}
	if cerr != nil {
		return fmt.Errorf("%s does not check: %w", file, cerr)
	}
	return nil
}

func printHeader(w io.Writer, file string, h *snapshot.Header) {
	fmt.Fprintf(w, "snapshot:   %s (format %d)\n", file, snapshot.Version)
	fmt.Fprintf(w, "raft:       index %d, term %d\n", h.Index, h.Term)
	fmt.Fprintf(w, "created:    %s on node %s (leader %s)\n", h.Created.Format(time.RFC3339), h.Node, h.Leader)
	fmt.Fprintf(w, "state time: %s\n", h.StateTime.Format(time.RFC3339Nano))
	fmt.Fprintf(w, "counts:     %d queues, %d messages, %d leases, %d tasks, %d agents, %d schedules\n",
		h.Counts.Queues, h.Counts.Messages, h.Counts.Leases, h.Counts.Tasks, h.Counts.Agents, h.Counts.Schedules)
	fmt.Fprintf(w, "audit head: seq %d, hash %s\n", h.AuditHead.Seq, h.AuditHead.Hash)
	fmt.Fprintf(w, "body:       %d bytes, SHA-256 %s\n", h.BodySize, h.BodySHA256)
}

func snapshotRestore(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("snapshot restore", flag.ContinueOnError)
	var af adminFlags
	af.registerRemote(fs)
	dataDir := fs.String("data-dir", "", "offline: write a new node's data directory DIR (empty or absent) holding the snapshot's state, instead of restoring a running cluster")
	var off offlineFlags
	fs.StringVar(&off.nodeID, "node-id", "n1", "offline: the id the node in --data-dir will be started with (serve --node-id)")
	fs.StringVar(&off.raftAddr, "raft-addr", "127.0.0.1:4438", "offline: its Raft address (serve's --bind and --raft-port)")
	fs.StringVar(&off.peers, "peers", "", "offline: every voter as id=host:raftport, as serve --peers, to restore each member of a new cluster from the same file (default: a single node, --node-id at --raft-addr)")
	keyArg := fs.String("key", "", "the cluster's audit public key, to check who signed the audit checkpoints")
	file, err := parseWithFile(fs, args)
	if err != nil {
		return err
	}
	fs.Visit(func(f *flag.Flag) { off.nodeIDSet = off.nodeIDSet || f.Name == "node-id" })
	var pub ed25519.PublicKey
	if *keyArg != "" {
		if pub, err = loadAuditKey(*keyArg); err != nil {
			return &usageError{err.Error()}
		}
	}
	if *dataDir != "" {
		if af.socket != "" || af.url != "" {
			return &usageError{"--data-dir (offline) and --admin-socket/--admin-url (online) exclude each other"}
		}
		return restoreOffline(file, *dataDir, pub, &off, stdout)
	}
	if af.socket == "" && af.url == "" {
		return &usageError{"name the cluster to restore: --admin-socket DATA-DIR/" + adminSocketName + " or --admin-url (of any node), or --data-dir DIR for an offline drill"}
	}
	// Everything is checked here before anything is sent; the node
	// checks the file again before it changes anything (a follower
	// checks it, and the leader it sends it on to checks it again).
	res, err := snapshot.Check(file, "", pub, "")
	if err != nil {
		return fmt.Errorf("%s refused, nothing changed: %w", file, err)
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	req, err := http.NewRequest(http.MethodPost, c.base+"/v1/snapshot/restore", f)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.stream(req)
	if err != nil {
		if isAdminCode(err, "not_leader") {
			// A node that cannot send the file on to the leader (one
			// without mutual TLS on its Raft port, or of an older version).
			return fmt.Errorf("%w (run restore against the leader's admin socket or --admin-url)", err)
		}
		return err
	}
	defer resp.Body.Close()
	var out transport.SnapshotRestoreResult
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return err
	}
	h := res.Header
	by := ""
	switch {
	case out.Via != "":
		by = fmt.Sprintf(" by the leader %s (sent through %s)", out.Leader, out.Via)
	case out.Leader != "":
		by = " by the leader " + out.Leader
	}
	fmt.Fprintf(stdout, "restored %s (index %d, audit head %d %s) at log index %d%s; every node installs it\n",
		file, h.Index, h.AuditHead.Seq, h.AuditHead.Hash, out.Index, by)
	return nil
}

// stream sends req with no overall timeout (a snapshot takes as long as
// it takes) and returns the answer, or the node's error.
func (c *adminClient) stream(req *http.Request) (*http.Response, error) {
	hc := *c.http
	hc.Timeout = 0
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var e transport.AdminError
		if json.Unmarshal(raw, &e) == nil && e.Code != "" {
			return nil, &adminError{code: e.Code, msg: e.Error}
		}
		return nil, fmt.Errorf("%s %s: %s %s", req.Method, req.URL.Path, resp.Status, bytes.TrimSpace(raw))
	}
	return resp, nil
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress draws a one-line bar of bytes written so far.
type progress struct {
	w     io.Writer
	total int64
	n     int64
	label string
	last  time.Time
}

func (p *progress) Write(b []byte) (int, error) {
	p.n += int64(len(b))
	if time.Since(p.last) >= 100*time.Millisecond {
		p.last = time.Now()
		p.draw()
	}
	return len(b), nil
}

func (p *progress) draw() {
	const width = 30
	if p.total <= 0 {
		fmt.Fprintf(p.w, "\r%s %s", p.label, mib(p.n))
		return
	}
	filled := int(p.n * width / p.total)
	fmt.Fprintf(p.w, "\r%s [%s%s] %3d%% %s/%s", p.label, strings.Repeat("#", filled), strings.Repeat(" ", width-filled),
		p.n*100/p.total, mib(p.n), mib(p.total))
}

// done draws the final state and ends the line; nil does nothing.
func (p *progress) done() {
	if p == nil {
		return
	}
	p.draw()
	fmt.Fprintln(p.w)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// offlineFlags name the node(s) an offline restore writes the data
// directory for: its Raft configuration.
type offlineFlags struct {
	nodeID, raftAddr, peers string
	nodeIDSet               bool // --node-id was given
}

// restoreOffline writes a new data directory holding the snapshot's
// state: a Raft snapshot of it (the configuration of a new cluster, term
// 1) and an empty Raft log. The node started on it restores state.db
// from that snapshot and continues the log after its index, so the state
// is as durable as any snapshot of a running node from the first start.
func restoreOffline(file, dir string, pub ed25519.PublicKey, off *offlineFlags, stdout io.Writer) error {
	servers, err := offlineServers(off)
	if err != nil {
		return err
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("%s %w: an offline restore writes only a new data directory (empty or absent)", dir, errDirHasData)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	tmp, err := os.MkdirTemp("", "mcpd-restore-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	compact := filepath.Join(tmp, "state.db")
	res, err := snapshot.Check(file, tmp, pub, compact)
	if err != nil {
		return fmt.Errorf("%s refused, nothing written: %w", file, err)
	}
	if err := fsm.PrepareRestore(compact, nil, 0); err != nil {
		return err
	}
	h := res.Header
	raftDir := filepath.Join(dir, "raft")
	if err := os.MkdirAll(raftDir, 0o700); err != nil {
		return err
	}
	// raft.db first, empty: the node treats snapshots without a log
	// store beside them as a lost log.
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(raftDir, "raft.db")})
	if err != nil {
		return err
	}
	if err := store.Close(); err != nil {
		return err
	}
	snaps, err := raft.NewFileSnapshotStore(raftDir, 2, io.Discard)
	if err != nil {
		return err
	}
	_, trans := raft.NewInmemTransport("")
	defer trans.Close()
	index := max(h.Index, 1)
	sink, err := snaps.Create(raft.SnapshotVersionMax, index, 1, raft.Configuration{Servers: servers}, index, trans)
	if err != nil {
		return err
	}
	body, err := os.Open(compact)
	if err != nil {
		sink.Cancel()
		return err
	}
	defer body.Close()
	if _, err := io.Copy(sink, body); err != nil {
		sink.Cancel()
		return err
	}
	if err := sink.Close(); err != nil {
		return err
	}
	ids := make([]string, len(servers))
	for i, s := range servers {
		ids[i] = string(s.ID)
	}
	fmt.Fprintf(stdout, "wrote %s from %s (index %d, audit head %d %s) for %s\n",
		dir, file, h.Index, h.AuditHead.Seq, h.AuditHead.Hash, strings.Join(ids, ","))
	fmt.Fprint(stdout, startHint(dir, off, servers))
	return nil
}

// startHint tells how to start the node on a data directory restored
// offline: with the node id and the Raft address (serve's --bind and
// --raft-port) of the configuration written, without which the node
// does not find itself in it and never elects a leader.
func startHint(dir string, off *offlineFlags, servers []raft.Server) string {
	serve := func(s raft.Server) string {
		host, port, err := net.SplitHostPort(string(s.Address))
		if err != nil {
			host, port = string(s.Address), "?"
		}
		return fmt.Sprintf("--node-id %s --data-dir %s --bind %s --raft-port %s", shellQuote(string(s.ID)), shellQuote(dir), shellQuote(host), port)
	}
	if off.peers == "" {
		s := servers[0]
		return fmt.Sprintf("start it with: mcpd serve --dev %s\n"+
			"(outside a drill, instead of --dev: --peers %s=%s and the node's TLS and cluster key flags)\n",
			serve(s), shellQuote(string(s.ID)), s.Address)
	}
	// With --node-id of one of the members, the directory is that one's.
	only := ""
	for _, s := range servers {
		if off.nodeIDSet && string(s.ID) == off.nodeID {
			only = off.nodeID
		}
	}
	var b strings.Builder
	b.WriteString("start the member this directory is for, with the node's TLS and cluster key flags added:\n")
	for _, s := range servers {
		if only != "" && string(s.ID) != only {
			continue
		}
		fmt.Fprintf(&b, "  mcpd serve %s --peers %s\n", serve(s), shellQuote(off.peers))
	}
	return b.String()
}

// shellQuote quotes s for a shell command line when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:=,@+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func offlineServers(off *offlineFlags) ([]raft.Server, error) {
	if off.peers == "" {
		if off.nodeID == "" || off.raftAddr == "" {
			return nil, &usageError{"--node-id and --raft-addr must not be empty"}
		}
		return []raft.Server{{ID: raft.ServerID(off.nodeID), Address: raft.ServerAddress(off.raftAddr), Suffrage: raft.Voter}}, nil
	}
	peers, err := cluster.ParsePeers(off.peers)
	if err != nil {
		return nil, &usageError{"--peers: " + err.Error()}
	}
	ids := make([]string, 0, len(peers))
	for id := range peers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	servers := make([]raft.Server, 0, len(ids))
	for _, id := range ids {
		servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(peers[id]), Suffrage: raft.Voter})
	}
	return servers, nil
}

var errDirHasData = errors.New("has data")

const snapshotHelp = `usage:
  mcpd snapshot save -o FILE [--data-dir DIR | --admin-socket SOCK | --admin-url URL --admin-token-file F [--ca CA]]
      write a consistent point-in-time copy of a running cluster's state to FILE (ingest goes on)
  mcpd snapshot inspect FILE [--key KEY] [--json]
      print FILE's header; verify its checksum, its database and its audit chain
  mcpd snapshot restore FILE (--admin-socket SOCK | --admin-url URL --admin-token-file F [--ca CA])
      check FILE, then replace the running cluster's state with it; any node will do
      (a follower checks it and sends it on to the leader); every node converges
  mcpd snapshot restore FILE --data-dir DIR
      offline: make DIR (empty or absent) a new node's data directory holding FILE's state, for a drill
`
