package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// newHCLogger gives hashicorp/raft a logger whose lines land in mcpd's slog
// stream at their own level, with component=name.
func newHCLogger(name string, l *slog.Logger) hclog.Logger {
	lvl := hclog.Info
	if l.Enabled(context.Background(), slog.LevelDebug) {
		lvl = hclog.Debug
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      lvl,
		JSONFormat: true,
		Output:     &hclogBridge{l: l.With("component", name)},
	})
}

// hclogBridge parses hclog's JSON lines and re-emits them through slog.
type hclogBridge struct{ l *slog.Logger }

func (b *hclogBridge) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			b.l.Info(string(line))
			continue
		}
		level := slog.LevelInfo
		switch m["@level"] {
		case "trace", "debug":
			level = slog.LevelDebug
		case "warn":
			level = slog.LevelWarn
		case "error":
			level = slog.LevelError
		}
		msg, _ := m["@message"].(string)
		attrs := make([]any, 0, 2*len(m))
		for k, v := range m {
			switch k {
			case "@level", "@message", "@timestamp", "@module", "@caller":
				continue
			}
			attrs = append(attrs, k, v)
		}
		b.l.Log(context.Background(), level, msg, attrs...)
	}
	return len(p), nil
}

var _ io.Writer = (*hclogBridge)(nil)
