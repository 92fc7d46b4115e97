package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/mcpd/mcpd/audit"
	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/cluster"
	"github.com/mcpd/mcpd/snapshot"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// runAudit handles "mcpd audit verify|export|key": offline checks of the
// audit log in a stopped node's data directory or in a snapshot.
func runAudit(args []string) error {
	if len(args) == 0 {
		return &usageError{"expected 'mcpd audit verify|export|tail|search|prune|key ...'"}
	}
	switch args[0] {
	case "verify":
		return auditVerify(args[1:], os.Stdout)
	case "export":
		return auditExport(args[1:], os.Stdout)
	case "key":
		return auditKey(args[1:], os.Stdout)
	case "tail":
		return auditTail(args[1:], os.Stdout)
	case "search":
		return auditSearch(args[1:], os.Stdout)
	case "prune":
		return auditPrune(args[1:], os.Stdout)
	case "-h", "-help", "--help", "help":
		return groupUsage(auditHelp)
	}
	return &usageError{fmt.Sprintf("unknown audit command %q: verify, export, tail, search, prune or key", args[0])}
}

// errAuditBroken: verify found the chain broken (the report says where).
var errAuditBroken = errors.New("the audit log does not verify")

// auditSource is the state database to read: a data directory's state.db
// or a snapshot.
type auditSource struct {
	dataDir, snapshot string
	tmpDir            string // where a snapshot file's body was copied
}

func (s *auditSource) register(fs *flag.FlagSet) {
	fs.StringVar(&s.dataDir, "data-dir", "mcpd-data", "a stopped node's data directory (reads DIR/state.db)")
	fs.StringVar(&s.snapshot, "snapshot", "", "a snapshot instead: a file from 'mcpd snapshot save', a directory DATA-DIR/raft/snapshots/ID, or its state.bin")
}

// auditFlags are the source flags of verify and export: a stopped node's
// data directory, a snapshot, or (--node) a running node's admin API.
type auditFlags struct {
	src    auditSource
	online bool
	admin  adminFlags
}

func (a *auditFlags) register(fs *flag.FlagSet, verb string) {
	a.src.register(fs)
	fs.BoolVar(&a.online, "node", false, verb+" a running node's log through its admin socket in --data-dir (or --admin-url)")
	a.admin.registerRemote(fs)
}

// parse parses and checks the flags; the admin flags then name the data
// directory's socket.
func (a *auditFlags) parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	a.admin.dataDir = a.src.dataDir
	return a.src.check(fs)
}

// check validates the flags once parsed.
func (s *auditSource) check(fs *flag.FlagSet) error {
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	if flagSet(fs, "data-dir") && s.snapshot != "" {
		return &usageError{"give --data-dir or --snapshot, not both"}
	}
	return nil
}

// flagSet reports whether the command line set the flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// lockWait is how long opening state.db waits for a running node's lock.
const lockWait = 500 * time.Millisecond

// open opens the database read-only and returns it with the path it read.
func (s *auditSource) open() (*bolt.DB, string, error) {
	path := filepath.Join(s.dataDir, "state.db")
	if s.snapshot != "" {
		var err error
		if path, err = snapshotState(s.snapshot); err != nil {
			return nil, "", err
		}
		if path, err = s.snapshotBody(path); err != nil {
			return nil, "", err
		}
	}
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) && s.snapshot == "" {
			return nil, path, fmt.Errorf("%s does not exist: is %s a node's data directory?", path, s.dataDir)
		}
		return nil, path, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockWait})
	if errors.Is(err, bolterrors.ErrTimeout) && s.snapshot == "" {
		hint := "stop it, or verify one of its snapshots with --snapshot"
		if snaps, _ := cluster.CheckSnapshots(filepath.Join(s.dataDir, "raft", "snapshots")); len(snaps) > 0 {
			hint = "stop it, or verify its newest snapshot: --snapshot " + filepath.Join(s.dataDir, "raft", "snapshots", snaps[0].ID)
		}
		return nil, path, fmt.Errorf("%s is locked: the node is running (%s)", path, hint)
	}
	if err != nil {
		return nil, path, fmt.Errorf("open %s: %w", path, err)
	}
	return db, path, nil
}

// snapshotBody returns path itself, or for a file that 'mcpd snapshot
// save' wrote, its body (the state database) copied to a temporary
// directory after its length and SHA-256 were checked against the header.
func (s *auditSource) snapshotBody(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	magic := make([]byte, len(snapshot.Magic))
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != snapshot.Magic {
		return path, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	h, _, err := snapshot.ReadHeader(f)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if s.tmpDir, err = os.MkdirTemp("", "mcpd-audit-"); err != nil {
		return "", err
	}
	body := filepath.Join(s.tmpDir, "state.db")
	out, err := os.OpenFile(body, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, sum), io.LimitReader(f, h.BodySize))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		return "", err
	case n != h.BodySize:
		return "", fmt.Errorf("%s is truncated: body %d of %d bytes", path, n, h.BodySize)
	case hex.EncodeToString(sum.Sum(nil)) != h.BodySHA256:
		return "", fmt.Errorf("%s: checksum mismatch: the body is not the one the header describes", path)
	}
	return body, nil
}

// snapshotState returns the state file of a snapshot. For a snapshot
// directory it first checks the CRC and size meta.json records (raft
// checks them only when it restores).
func snapshotState(p string) (string, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return p, nil
	}
	snaps, err := cluster.CheckSnapshots(filepath.Dir(filepath.Clean(p)))
	if err != nil {
		return "", err
	}
	for _, c := range snaps {
		if c.ID == filepath.Base(filepath.Clean(p)) {
			if !c.OK {
				return "", fmt.Errorf("snapshot %s is damaged: %s", p, c.Problem)
			}
			return filepath.Join(p, "state.bin"), nil
		}
	}
	return "", fmt.Errorf("%s is not a snapshot directory (no meta.json and state.bin)", p)
}

// readAudit runs fn on a read transaction of the source. A damaged page
// makes bbolt panic or fault; that becomes an error, not a crash.
func (s *auditSource) read(fn func(tx *bolt.Tx, path string) error) (err error) {
	db, path, err := s.open()
	if s.tmpDir != "" {
		defer os.RemoveAll(s.tmpDir)
	}
	if err != nil {
		return err
	}
	defer db.Close()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s is damaged beyond the audit log (bbolt: %v); 'mcpd check' tells more", path, r)
		}
	}()
	return db.View(func(tx *bolt.Tx) error {
		err := fn(tx, path)
		if errors.Is(err, audit.ErrNoLog) {
			return fmt.Errorf("%s: %w (written before the audit log existed, or not a state database)", path, err)
		}
		return err
	})
}

func auditVerify(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	var af auditFlags
	af.register(fs, "verify")
	src := &af.src
	keyArg := fs.String("key", "", "the cluster's audit public key (base64, hex or PEM, or a file holding it: 'mcpd audit key' prints it); without it checkpoints are checked against the keys they name")
	exportFile := fs.String("export", "", "verify an export instead ('mcpd audit export' output; - for stdin): every hash, link and checkpoint signature in it")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := af.parse(fs, args); err != nil {
		return err
	}
	if *exportFile != "" && (src.snapshot != "" || flagSet(fs, "data-dir")) {
		return &usageError{"give one of --data-dir, --snapshot and --export"}
	}
	var pub ed25519.PublicKey
	if *keyArg != "" {
		var err error
		if pub, err = loadAuditKey(*keyArg); err != nil {
			return &usageError{err.Error()}
		}
	}
	var r audit.Report
	var path string
	var err error
	switch {
	case af.online:
		path = "node"
		r, err = verifyOnline(&af.admin, *keyArg)
	case *exportFile != "":
		path = *exportFile
		r, err = verifyExportFile(path, pub)
	default:
		err = src.read(func(tx *bolt.Tx, p string) error {
			var err error
			r, err = audit.Verify(tx, pub)
			path = p
			return err
		})
	}
	if err != nil {
		return err
	}
	if *asJSON {
		out := struct {
			Source string `json:"source"`
			audit.Report
		}{path, r}
		if err := encodeJSON(stdout, out, true); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(stdout, r)
	}
	if !r.OK {
		return errAuditBroken
	}
	return nil
}

func verifyExportFile(path string, pub ed25519.PublicKey) (audit.Report, error) {
	in := os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return audit.Report{}, err
		}
		defer f.Close()
		in = f
	}
	r, err := audit.VerifyExport(in, pub)
	if err != nil {
		return r, fmt.Errorf("%s is not an audit export: %w", path, err)
	}
	return r, nil
}

// loadAuditKey reads --key: a file holding the key, or the key itself.
func loadAuditKey(arg string) (ed25519.PublicKey, error) {
	text := arg
	if b, err := os.ReadFile(arg); err == nil {
		text = string(b)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("--key %s: %v", arg, err)
	}
	pub, err := audit.ParsePublicKey(text)
	if err != nil {
		return nil, fmt.Errorf("--key: %v", err)
	}
	return pub, nil
}

func auditExport(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit export", flag.ContinueOnError)
	var af auditFlags
	af.register(fs, "export")
	since := fs.String("since", "0", "export the entries after this seq (the last one you already have)")
	if err := af.parse(fs, args); err != nil {
		return err
	}
	after, err := strconv.ParseUint(*since, 10, 64)
	if err != nil {
		return &usageError{fmt.Sprintf("--since %q is not a sequence number", *since)}
	}
	if af.online {
		return exportOnline(&af.admin, after, stdout)
	}
	return af.src.read(func(tx *bolt.Tx, _ string) error {
		_, err := audit.Export(tx, after, stdout)
		return err
	})
}

func auditKey(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit key", flag.ContinueOnError)
	keyFile := fs.String("cluster-key-file", "", "the cluster key file the nodes are given")
	asPEM := fs.Bool("pem", false, "print a PEM PUBLIC KEY block (for openssl and other tools) instead of base64")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	if *keyFile == "" {
		return &usageError{"--cluster-key-file is required"}
	}
	k, err := auth.LoadClusterKey(*keyFile)
	if err != nil {
		return err
	}
	pub := k.AuditPublicKey()
	if !*asPEM {
		_, err := fmt.Fprintln(stdout, audit.FormatPublicKey(pub))
		return err
	}
	b, err := audit.PublicKeyPEM(pub)
	if err != nil {
		return err
	}
	_, err = stdout.Write(b)
	return err
}

const auditHelp = `usage:
  mcpd audit verify [--data-dir DIR | --snapshot PATH | --export FILE] [--node] [--key KEY] [--json]
      check the hash chain and the signed checkpoints; exit status 1 names the first broken entry
      (--node: a running node's log, fetched through its admin socket or --admin-url)
  mcpd audit export [--data-dir DIR | --snapshot PATH] [--node] [--since SEQ]
      write the entries after SEQ as JSON lines
  mcpd audit tail [--data-dir DIR | --admin-url URL ...] [--since SEQ]
      follow a running node's log, checking each entry against the one before
  mcpd audit search [--data-dir DIR | --admin-url URL ...] [--actor A] [--type T] [--outcome O]
                    [--queue Q] [--id ID] [--since T] [--until T] [--grep S] [--limit N] [--desc] [--json]
      a running node's entries that match: a table (seq, time, type, actor, subject, result)
      or JSON lines; --id QUEUE/SEQ is a message's settles, --since takes RFC 3339, unix ms or 15m
  mcpd audit prune --through SEQ [--data-dir DIR | --admin-url URL ...] [--json]
      remove a running cluster's entries up to SEQ (before the latest checkpoint) from every node;
      export them first: the chain then verifies from SEQ, anchored by the checkpoints after it
  mcpd audit key --cluster-key-file FILE [--pem]
      print the cluster's audit public key, for --key
`
