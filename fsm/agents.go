package fsm

import (
	"errors"
	"fmt"

	"github.com/mcpd/mcpd/auth"
	"github.com/mcpd/mcpd/queue"
)

// AgentRevoked is the effect of a revocation on every node: the node
// closes the agent's connections it holds. Its target is no connection.
type AgentRevoked struct{ Agent string }

// Target implements queue.Effect.
func (*AgentRevoked) Target() string { return "" }

// AgentResult answers agent.add and agent.revoke with the stored record.
type AgentResult struct{ Agent auth.Agent }

func init() {
	register(TypeAgentAdd, func(a *AgentAddArgs) error { return nil },
		func(t *Tx, a *AgentAddArgs) (any, error) {
			rec, err := auth.AddAgent(t.Bolt(), a.Agent, t.Now())
			if err != nil {
				return nil, agentErr(err)
			}
			return &AgentResult{Agent: rec}, nil
		})
	register(TypeAgentRevoke, func(a *AgentRevokeArgs) error {
		if !auth.ValidAgentName(a.Name) {
			return badArg("name", "is not an agent name")
		}
		if len(a.Reason) > queue.MaxReasonLen {
			return badArg("reason", fmt.Sprintf("must be at most %d bytes", queue.MaxReasonLen))
		}
		return nil
	}, func(t *Tx, a *AgentRevokeArgs) (any, error) {
		rec, err := auth.RevokeAgent(t.Bolt(), a.Name, t.Actor(), a.Reason, t.Now())
		if err != nil {
			return nil, agentErr(err)
		}
		t.Effects = append(t.Effects, &AgentRevoked{Agent: a.Name})
		return &AgentResult{Agent: rec}, nil
	})
	// An auth event changes nothing but the audit log, which records
	// every command.
	register(TypeAuthEvent, func(a *AuthEventArgs) error {
		if a.Kind == "" || len(a.Kind) > 64 || len(a.Agent) > 64 || len(a.Subject) > 256 ||
			len(a.Code) > 64 || len(a.Detail) > 1024 || len(a.Node) > queue.MaxConnLen || len(a.Remote) > 256 {
			return badArg("auth event", "has a field out of range")
		}
		return nil
	}, func(t *Tx, a *AuthEventArgs) (any, error) { return nil, nil })
}

// agentErr maps identity errors to the business errors of every command.
func agentErr(err error) error {
	switch {
	case errors.Is(err, auth.ErrAgentExists):
		return conflict(err)
	case errors.Is(err, auth.ErrAgentUnknown):
		return fmt.Errorf("%w: %w", queue.ErrNotFound, err)
	case errors.Is(err, auth.ErrBadAgent):
		return fmt.Errorf("%w: %w", queue.ErrBadRequest, err)
	}
	return err
}
