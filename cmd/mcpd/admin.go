package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mcpd/mcpd/transport"
)

// adminSocketName is the admin API's unix socket in the data directory.
const adminSocketName = "admin.sock"

// adminFlags select the node an admin command talks to: its local unix
// socket (the default, through --data-dir), or a remote admin endpoint
// with an operator token.
type adminFlags struct {
	dataDir, socket string
	url, tokenFile  string
	caFile          string
}

func (a *adminFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.dataDir, "data-dir", "mcpd-data", "the node's data directory, where its admin socket is")
	a.registerRemote(fs)
}

// registerRemote registers the flags other than --data-dir, for commands
// that have their own.
func (a *adminFlags) registerRemote(fs *flag.FlagSet) {
	fs.StringVar(&a.socket, "admin-socket", "", "the node's admin socket (default DATA-DIR/"+adminSocketName+")")
	fs.StringVar(&a.url, "admin-url", "", "a remote admin endpoint, e.g. https://10.0.0.1:4436, instead of the socket")
	fs.StringVar(&a.tokenFile, "admin-token-file", "", "file holding the operator token for --admin-url")
	fs.StringVar(&a.caFile, "ca", "", "CA certificate (PEM) to trust for --admin-url")
}

// adminClient calls a node's admin API.
type adminClient struct {
	http  *http.Client
	base  string
	token string
}

func (a *adminFlags) client() (*adminClient, error) {
	if a.url != "" {
		c := &adminClient{base: strings.TrimSuffix(a.url, "/")}
		if a.tokenFile == "" {
			return nil, &usageError{"--admin-url needs --admin-token-file"}
		}
		b, err := os.ReadFile(a.tokenFile)
		if err != nil {
			return nil, err
		}
		c.token = strings.TrimSpace(string(b))
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if a.caFile != "" {
			pem, err := os.ReadFile(a.caFile)
			if err != nil {
				return nil, err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s: no certificate", a.caFile)
			}
			tc.RootCAs = pool
		}
		c.http = &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tc}}
		return c, nil
	}
	sock := a.socket
	if sock == "" {
		sock = filepath.Join(a.dataDir, adminSocketName)
	}
	if _, err := os.Stat(sock); err != nil {
		return nil, fmt.Errorf("no admin socket at %s (is the node running with this --data-dir?): %w", sock, err)
	}
	return &adminClient{
		base: "http://mcpd",
		http: &http.Client{Timeout: time.Minute, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
		}},
	}, nil
}

// do sends a JSON request and decodes a JSON answer into out; an error
// answer becomes an error with the node's code and message.
func (c *adminClient) do(method, path string, body, out any) error {
	raw, err := c.doRaw(method, path, body)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(raw, out)
}

// doRaw is do returning the answer's bytes.
func (c *adminClient) doRaw(method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		var e transport.AdminError
		if json.Unmarshal(raw, &e) == nil && e.Code != "" {
			return nil, &adminError{code: e.Code, msg: e.Error}
		}
		return nil, fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	return raw, nil
}

// adminError is an error the node answered.
type adminError struct{ code, msg string }

func (e *adminError) Error() string { return e.code + ": " + e.msg }

// isAdminCode reports whether err is the node's answer with code.
func isAdminCode(err error, code string) bool {
	var ae *adminError
	return errors.As(err, &ae) && ae.code == code
}
