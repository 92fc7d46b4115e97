package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/internal/durable"
	"github.com/mcpd/mcpd/transport"
)

// runAgent handles "mcpd agent add|list|show|revoke".
func runAgent(args []string) error {
	if len(args) == 0 {
		return &usageError{"expected 'mcpd agent add|list|show|revoke ...'"}
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		return groupUsage(agentHelp)
	case "add":
		return agentAdd(args[1:], os.Stdout)
	case "list":
		return agentList(args[1:], os.Stdout)
	case "show":
		return agentShow(args[1:], os.Stdout)
	case "revoke":
		return agentRevoke(args[1:], os.Stdout)
	}
	return &usageError{fmt.Sprintf("unknown agent command %q: add, list, show or revoke", args[0])}
}

func agentAdd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("agent add", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	alg := fs.String("alg", auth.AlgEd25519, "ed25519 (the node keeps only the public key) or hmac-sha256 (a shared secret)")
	out := fs.String("out", "", "write the credential to this file (mode 0600; it must not exist)")
	var caps, enq, con, pub, sub, send, submit, register stringList
	fs.Var(&caps, "cap", "a capability the agent may register (repeatable)")
	fs.Var(&enq, "allow-enqueue", "queue glob the agent may enqueue to (repeatable)")
	fs.Var(&con, "allow-consume", "queue glob the agent may consume from (repeatable)")
	fs.Var(&pub, "allow-publish", "topic glob the agent may publish to (repeatable)")
	fs.Var(&sub, "allow-subscribe", "topic glob the agent may subscribe to (repeatable)")
	fs.Var(&send, "allow-send", "agent glob the agent may send direct messages to (repeatable)")
	fs.Var(&submit, "allow-submit", "capability glob the agent may submit tasks for (repeatable)")
	fs.Var(&register, "allow-register", "capability glob the agent may register, beside --cap (repeatable)")
	var keys stringList
	fs.Var(&keys, "allow-keys", "Redis key glob the agent may read and write (repeatable; '*' also allows KEYS and DBSIZE)")
	token := fs.Bool("token", false, "also issue a password for the Redis port (AUTH NAME TOKEN), kept in the credential; the node stores only its SHA-256")
	msgs := fs.Float64("rate-msgs", 0, "requests per second per node (0: unlimited)")
	bytes := fs.Float64("rate-bytes", 0, "request bytes per second per node (0: unlimited)")
	name, err := parseOne(fs, args, "agent NAME")
	if err != nil {
		return err
	}
	if !auth.ValidAgentName(name) {
		return &usageError{fmt.Sprintf("%q is not an agent name: 1 to 64 bytes of [A-Za-z0-9._-], not ending in .dlq", name)}
	}
	req := transport.AdminAgentRequest{
		Name: name, Alg: *alg, Caps: caps,
		ACL: auth.ACL{
			Enqueue: enq, Consume: con, Publish: pub, Subscribe: sub,
			Send: send, Submit: submit, Register: register, Keys: keys,
		},
		Limits: auth.Limits{MsgsPerSec: *msgs, BytesPerSec: *bytes},
	}
	var key auth.Key
	switch *alg {
	case auth.AlgEd25519:
		pubKey, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		req.PublicKey = pubKey
		key = auth.Key{Alg: auth.AlgEd25519, Public: pubKey, Signer: priv}
	case auth.AlgHMACSHA256:
		secret := make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return err
		}
		req.Secret = secret
		key = auth.Key{Alg: auth.AlgHMACSHA256, Secret: secret}
	default:
		return &usageError{"--alg must be ed25519 or hmac-sha256"}
	}
	if err := req.ACL.Check(); err != nil {
		return &usageError{err.Error()}
	}
	cred, err := auth.MarshalCredential(name, key)
	if err != nil {
		return err
	}
	if *token {
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return err
		}
		tok := base64.RawURLEncoding.EncodeToString(raw)
		sum := sha256.Sum256([]byte(tok))
		req.TokenSHA256 = sum[:]
		if cred, err = auth.WithRedisToken(cred, tok); err != nil {
			return err
		}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	// The file is created first, so that a taken path fails before the
	// agent exists.
	var f *os.File
	if *out != "" {
		if f, err = os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
	}
	var rec auth.Agent
	if err := c.do("POST", "/v1/agents", &req, &rec); err != nil {
		if f != nil {
			f.Close()
			os.Remove(*out)
		}
		return err
	}
	if f != nil {
		_, err = f.Write(append(cred, '\n'))
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("agent %s was added, but writing its credential to %s failed (revoke it and add it again): %w", name, *out, err)
		}
		_ = durable.SyncDir(filepath.Dir(*out))
	}
	fmt.Fprintf(os.Stderr, "agent %s added (%s); its credential is printed once and cannot be shown again\n", name, rec.Alg)
	fmt.Fprintf(stdout, "%s\n", cred)
	return nil
}

func agentList(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("agent list", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var resp struct {
		Agents []auth.Agent `json:"agents"`
	}
	if err := c.do("GET", "/v1/agents", nil, &resp); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, resp)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tALG\tSTATE\tCREATED\tCAPABILITIES")
	for _, a := range resp.Agents {
		state := "active"
		if !a.Active() {
			state = "revoked " + msTime(a.Revoked)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.Name, a.Alg, state, msTime(a.Created), strings.Join(a.Caps, ","))
	}
	return tw.Flush()
}

func msTime(ms int64) string {
	return time.UnixMilli(ms).UTC().Format(time.RFC3339)
}

// namedAdmin parses the flags of a command on one named thing, what it
// is called in messages ("agent NAME"), and returns the name and a client
// of the node's admin API.
func namedAdmin(fs *flag.FlagSet, af *adminFlags, args []string, what string) (string, *adminClient, error) {
	name, err := parseOne(fs, args, what)
	if err != nil {
		return "", nil, err
	}
	c, err := af.client()
	return name, c, err
}

func agentShow(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("agent show", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	name, c, err := namedAdmin(fs, &af, args, "agent NAME")
	if err != nil {
		return err
	}
	var rec json.RawMessage
	if err := c.do("GET", "/v1/agents/"+url.PathEscape(name), nil, &rec); err != nil {
		return err
	}
	return printRawJSON(stdout, rec)
}

func agentRevoke(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("agent revoke", flag.ContinueOnError)
	var af adminFlags
	af.register(fs)
	reason := fs.String("reason", "", "why, for the audit log")
	name, c, err := namedAdmin(fs, &af, args, "agent NAME")
	if err != nil {
		return err
	}
	var rec auth.Agent
	if err := c.do("POST", "/v1/agents/"+url.PathEscape(name)+"/revoke", map[string]string{"reason": *reason}, &rec); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "agent %s revoked at %s; its connections on every node are closed\n", rec.Name, msTime(rec.Revoked))
	return nil
}
