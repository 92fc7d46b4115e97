package queue

import (
	"encoding/binary"
	"strings"
)

// PublishArgs broadcasts an envelope on a topic.
type PublishArgs struct {
	Topic string   `msgpack:"t"`
	From  string   `msgpack:"f"`
	ID    string   `msgpack:"i"`
	Hash  [32]byte `msgpack:"h"`
	Env   []byte   `msgpack:"e"`
}

// PublishResult is the outcome of a publish.
type PublishResult struct {
	Receivers int
	Dup       bool
}

// topicDest is the dedup destination of a publish; it cannot collide with a
// queue name because '#' is not allowed in queue names.
func topicDest(topic string) string { return "#" + topic }

// Publish hands an event to every subscription matching the topic, on every
// node (at-most-once). Duplicates within the dedup window send nothing.
func (t *Tx) Publish(a PublishArgs) (PublishResult, error) {
	dest := topicDest(a.Topic)
	if d, err := t.dedupCheck(a.From, a.ID, dest, a.Hash); err != nil || d != nil {
		return PublishResult{Dup: d != nil}, err
	}
	var res PublishResult
	err := t.b(bucketSubs).ForEach(func(k, v []byte) error {
		s := &subRec{}
		if _, err := get(t.b(bucketSubs), k, s); err != nil {
			return err
		}
		if !MatchTopic(s.Pattern, a.Topic) {
			return nil
		}
		res.Receivers++
		if t.isLocal(s.Conn) {
			t.Effects = append(t.Effects, &Event{Conn: s.Conn, Sub: binary.BigEndian.Uint64(k), Topic: a.Topic, Msg: a.Env})
		}
		return nil
	})
	if err != nil {
		return PublishResult{}, err
	}
	return res, t.dedupRemember(a.From, a.ID, dest, 0, a.Hash)
}

// SubscribeArgs adds a subscription for a connection.
type SubscribeArgs struct {
	Pattern string `msgpack:"p"`
	Conn    string `msgpack:"c"`
}

// Subscribe registers a subscription and returns its id.
func (t *Tx) Subscribe(a SubscribeArgs) (uint64, error) {
	id, err := t.nextID("sub")
	if err != nil {
		return 0, err
	}
	return id, put(t.b(bucketSubs), u64(id), &subRec{Pattern: a.Pattern, Node: ConnNode(a.Conn), Conn: a.Conn})
}

// Unsubscribe removes a subscription of the connection.
func (t *Tx) Unsubscribe(id uint64, conn string) error {
	s := &subRec{}
	ok, err := get(t.b(bucketSubs), u64(id), s)
	if err != nil {
		return err
	}
	if !ok || s.Conn != conn {
		return ErrNotFound
	}
	return t.b(bucketSubs).Delete(u64(id))
}

// MatchTopic reports whether a subscription pattern matches a topic: '*'
// matches one token, '>' (last only) one or more trailing tokens.
func MatchTopic(pattern, topic string) bool {
	for {
		pt, prest, pmore := strings.Cut(pattern, ".")
		tt, trest, tmore := strings.Cut(topic, ".")
		switch {
		case pt == ">":
			return true
		case pt != "*" && pt != tt:
			return false
		case !pmore || !tmore:
			return pmore == tmore
		}
		pattern, topic = prest, trest
	}
}

// ValidTopic checks a topic (wildcards=false) or a subscription pattern.
func ValidTopic(s string, wildcards bool) bool {
	if s == "" || len(s) > 512 {
		return false
	}
	toks := strings.Split(s, ".")
	for i, tok := range toks {
		if tok == "" {
			return false
		}
		if wildcards && (tok == "*" || (tok == ">" && i == len(toks)-1)) {
			continue
		}
		for j := 0; j < len(tok); j++ {
			c := tok[j]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
				return false
			}
		}
	}
	return true
}
