package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mcpd/mcpd/client"
)

const sendUsage = "usage: mcpd send --queue Q|--to AGENT [--count N] [--body JSON|-] [--priority P] [--delay-ms D] [--server URL[,URL]] [--ca FILE] [--agent NAME]"

// runSend handles "mcpd send": it enqueues --count messages (or sends them
// to an agent's inbox) and prints the seq of each acknowledged one.
func runSend(args []string) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	var cf connFlags
	cf.register(fs, "cli", 30*time.Second, "how long to wait for each message's ok, retrying while the cluster has no leader")
	queue := fs.String("queue", "", "queue to enqueue to")
	to := fs.String("to", "", "agent whose inbox (@AGENT) gets the messages, instead of --queue")
	count := fs.Int("count", 1, "number of messages to send")
	body := fs.String("body", "null", "message body as JSON (quote text: '\"hi\"'), or - to read it from stdin")
	priority := fs.Int("priority", 0, "priority 0-9, higher is delivered first")
	delay := fs.Int64("delay-ms", 0, "deliver no earlier than this many milliseconds from now")
	intent := fs.String("intent", "", "the envelope's intent: why this message is sent")
	setUsage(fs, sendUsage)
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return &usageError{fmt.Sprintf("unexpected argument %q (the body goes in --body)", fs.Arg(0))}
	case (*queue == "") == (*to == ""):
		return &usageError{"give exactly one of --queue Q or --to AGENT"}
	case *count < 1:
		return &usageError{"--count must be at least 1"}
	case *priority < 0 || *priority > 9:
		return &usageError{"--priority must be between 0 and 9"}
	case *delay < 0:
		return &usageError{"--delay-ms must not be negative"}
	}
	raw, err := readBody(*body)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := cf.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()

	var opts []client.EnqueueOption
	if *priority != 0 {
		opts = append(opts, client.WithPriority(*priority))
	}
	if *delay > 0 {
		opts = append(opts, client.WithDelay(*delay))
	}
	if *intent != "" {
		opts = append(opts, client.WithIntent(*intent))
	}
	for i := 0; i < *count; i++ {
		mctx, cancel := cf.withTimeout(ctx)
		var res client.EnqueueResult
		if *to != "" {
			res, err = c.Send(mctx, *to, raw, opts...)
		} else {
			res, err = c.Enqueue(mctx, *queue, raw, opts...)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("message %d of %d not acknowledged: %w%s", i+1, *count, err, errHint(err, cf.cred != ""))
		}
		fmt.Println(res.Seq)
	}
	return nil
}

// readBody returns the --body value ("-": standard input) as JSON.
func readBody(v string) (json.RawMessage, error) {
	b := []byte(v)
	if v == "-" {
		var err error
		if b, err = io.ReadAll(os.Stdin); err != nil {
			return nil, fmt.Errorf("reading the body from stdin: %w", err)
		}
	}
	b = []byte(strings.TrimSpace(string(b)))
	if !json.Valid(b) {
		return nil, &usageError{"--body must be JSON, e.g. --body '{\"task\":\"x\"}' or --body '\"plain text\"'"}
	}
	return b, nil
}

// connFlags are the connection flags shared by send, recv and bench.
type connFlags struct {
	servers string
	ca      string
	agent   string
	cred    string
	timeout time.Duration
}

const defaultCA = "mcpd-data/tls/ca.pem"

func (f *connFlags) register(fs *flag.FlagSet, agent string, timeout time.Duration, timeoutHelp string) {
	fs.StringVar(&f.servers, "server", "wss://127.0.0.1:4433/v1", "node URLs, comma-separated; HOST:PORT means wss://HOST:PORT/v1")
	fs.StringVar(&f.ca, "ca", "", "CA certificate (PEM) of the cluster (default "+defaultCA+" when it exists)")
	fs.StringVar(&f.agent, "agent", agent, "agent name to authenticate as with dev auth (alg none), when --cred is not given")
	fs.StringVar(&f.cred, "cred", "", "the agent's credential file ('mcpd agent add --out'): authenticate and sign as that agent")
	fs.DurationVar(&f.timeout, "timeout", timeout, timeoutHelp+"; 0 waits forever")
}

func (f *connFlags) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if f.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, f.timeout)
}

// urls parses --server.
func (f *connFlags) urls() ([]string, error) {
	var out []string
	for _, s := range strings.Split(f.servers, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.Contains(s, "://") {
			s = "wss://" + s + "/v1"
		}
		if !strings.HasPrefix(s, "wss://") && !strings.HasPrefix(s, "ws://") {
			return nil, &usageError{fmt.Sprintf("--server %q: want a URL like wss://127.0.0.1:4433/v1", s)}
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, &usageError{"--server is empty: give a URL like wss://127.0.0.1:4433/v1"}
	}
	return out, nil
}

func (f *connFlags) options() (client.Options, error) {
	urls, err := f.urls()
	if err != nil {
		return client.Options{}, err
	}
	ca := f.ca
	if ca == "" {
		if _, err := os.Stat(defaultCA); err == nil {
			ca = defaultCA
		}
	}
	opts := client.Options{
		URLs:   urls,
		Agent:  f.agent,
		CAFile: ca,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if f.cred != "" {
		signer, err := client.LoadCredentials(f.cred)
		if err != nil {
			return client.Options{}, fmt.Errorf("--cred: %w", err)
		}
		opts.Agent, opts.Signer = signer.Agent, signer
	}
	return opts, nil
}

// dial connects with the flags, explaining the usual failures.
func (f *connFlags) dial(ctx context.Context) (*client.Client, error) {
	opts, err := f.options()
	if err != nil {
		return nil, err
	}
	return dialWith(ctx, opts, f.timeout)
}

func dialWith(ctx context.Context, opts client.Options, timeout time.Duration) (*client.Client, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c, err := client.Dial(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to %s: %w%s", strings.Join(opts.URLs, ","), err, errHint(err, opts.Signer != nil))
	}
	return c, nil
}

// errHint suggests what to do about a connection or request failure;
// cred is whether the agent authenticated with --cred.
func errHint(err error, cred bool) string {
	msg := err.Error()
	switch {
	case client.IsCode(err, "unauthenticated") && strings.Contains(msg, "revoked"):
		return "" // the node says why; a revoked agent needs a new identity
	case (client.IsCode(err, "unauthenticated") || client.IsCode(err, "bad_signature")) && cred:
		return "\nhint: the node does not accept the credential in --cred: was it made for an agent of this cluster ('mcpd agent list')?"
	case client.IsCode(err, "unauthenticated") || client.IsCode(err, "bad_signature"):
		return "\nhint: this server wants an agent identity: pass --cred FILE ('mcpd agent add NAME --out FILE' on a node makes one)"
	case client.IsCode(err, "forbidden"):
		return "\nhint: the agent may not use this queue: its ACL does not grant it ('mcpd agent show NAME'), or it is another agent's @inbox"
	case strings.Contains(msg, "connection limit"):
		return "\nhint: the node is at its --max-conns; close idle connections, use another node, or raise the limit"
	case client.IsCode(err, "unavailable") || errors.Is(err, context.DeadlineExceeded):
		return "\nhint: the cluster had no leader in time; check that a majority of nodes is up, or raise --timeout"
	case strings.Contains(msg, "x509") || strings.Contains(msg, "certificate"):
		return "\nhint: pass the cluster's CA certificate with --ca (a node keeps it in DATA-DIR/tls/ca.pem)"
	case strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such host"):
		return "\nhint: is mcpd running there? Start one with 'mcpd serve --dev', or fix --server"
	case strings.Contains(msg, "bad handshake"):
		return "\nhint: that address does not serve MCP; the URL ends in /v1 (wss://HOST:4433/v1)"
	}
	return ""
}

// setUsage makes -h print the one-line usage and the flags.
func setUsage(fs *flag.FlagSet, line string) {
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), line)
		fs.PrintDefaults()
	}
}
