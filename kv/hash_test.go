package kv

import "testing"

// The replies below are Redis 7.0's, taken from redis-server for the same
// commands in the same order.
func Test_Hash_Commands(t *testing.T) {
	runCollCases(t, []collCase{
		{"set s x", "+OK"},
		{"hset s a b", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"hset h a", "-ERR wrong number of arguments for 'hset' command"},
		{"hset h a 1 b 2 a 3", ":2"},
		{"hgetall h", "{\"a\" \"3\" \"b\" \"2\"}"},
		{"hmset h c 4", "+OK"},
		{"hsetnx h c 5", ":0"},
		{"hsetnx h d 5", ":1"},
		{"hsetnx s d 5", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"hincrby h a 1", ":4"},
		{"hincrby h a x", "-ERR value is not an integer or out of range"},
		{"hincrby s a x", "-ERR value is not an integer or out of range"},
		{"hincrby s a 1", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"hincrby h z 9223372036854775807", ":9223372036854775807"},
		{"hincrby h z 1", "-ERR increment or decrement would overflow"},
		{"hincrby h n -9223372036854775808", ":-9223372036854775808"},
		{"hincrby h n -1", "-ERR increment or decrement would overflow"},
		{"hincrby h n 0", ":-9223372036854775808"},
		{"hset h v abc", ":1"},
		{"hincrby h v 1", "-ERR hash value is not an integer"},
		{"hincrby h v x", "-ERR value is not an integer or out of range"},
		{"hset h sp \" 1\"", ":1"},
		{"hincrby h sp 1", "-ERR hash value is not an integer"},
		{"hset h plus +1", ":1"},
		{"hincrby h plus 1", "-ERR hash value is not an integer"},
		{"hincrby h a -01", "-ERR value is not an integer or out of range"},
		{"hincrby nh q 0", ":0"},
		{"exists nh", ":1"},
		{"hgetall nh", "{\"q\" \"0\"}"},
		{"hgetall nothere", "{}"},
		{"hkeys nothere", "[]"},
		{"hvals nothere", "[]"},
		{"hkeys h", "[\"a\" \"b\" \"c\" \"d\" \"z\" \"n\" \"v\" \"sp\" \"plus\"]"},
		{"hvals h", "[\"4\" \"2\" \"4\" \"5\" \"9223372036854775807\" \"-9223372036854775808\" \"abc\" \" 1\" \"+1\"]"},
		{"hmget h a zz", "[\"4\" nil]"},
		{"hmget nh a", "[nil]"},
		{"hmget s a", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"hdel h a zz a", ":1"},
		{"hdel h a", ":0"},
		{"hkeys h", "[\"b\" \"c\" \"d\" \"z\" \"n\" \"v\" \"sp\" \"plus\"]"},
		{"hset h a again", ":1"},
		{"hkeys h", "[\"b\" \"c\" \"d\" \"z\" \"n\" \"v\" \"sp\" \"plus\" \"a\"]"},
		{"hstrlen h v", ":3"},
		{"hstrlen h zz", ":0"},
		{"hstrlen s a", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"hexists h v", ":1"},
		{"hexists h zz", ":0"},
		{"hexists nh2 zz", ":0"},
		{"hexists s v", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"hlen h", ":9"},
		{"hlen nh", ":1"},
		{"hlen s", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"hkeys s", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"hvals s", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"hgetall s", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"hdel s a", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"hdel nh a", ":0"},
		{"hmset h a", "-ERR wrong number of arguments for 'hmset' command"},
		{"hsetnx h a", "-ERR wrong number of arguments for 'hsetnx' command"},
		{"hget s a", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"hget h a", "\"again\""},
		{"hget h zz", "nil"},
		{"hget nh2 a", "nil"},
		{"get h", "-WRONGTYPE Operation against a key holding the wrong kind of value"},
		{"type h", "+hash"},
		{"type new", "+none"},
		{"set h x", "+OK"},
		{"type h", "+string"},
		{"hset h2 f v", ":1"},
		{"del h2", ":1"},
		{"exists h2", ":0"},
		{"hset h3 f v", ":1"},
		{"hdel h3 f", ":1"},
		{"exists h3", ":0"},
		{"hset h4 f v", ":1"},
		{"expire h4 100", ":1"},
		{"hset h4 g w", ":1"},
		{"ttl h4", ":100"},
		{"rpush l4 a", ":1"},
		{"expire l4 100", ":1"},
		{"rpush l4 b", ":2"},
		{"lpop l4", "\"a\""},
		{"ttl l4", ":100"},
		{"lpop l4", "\"b\""},
		{"ttl l4", ":-2"},
	})
}

func Test_Hash_InsertionOrder(t *testing.T) {
	runCollCases(t, []collCase{
		{"hset h c 1 a 2 b 3", ":3"},
		{"hset h a 4 d 5", ":1"},
		{"hdel h c", ":1"},
		{"hset h c 6", ":1"},
		{"hgetall h", `{"a" "4" "b" "3" "d" "5" "c" "6"}`},
		{"hkeys h", `["a" "b" "d" "c"]`},
		{"hvals h", `["4" "3" "5" "6"]`},
	})
}

// Keys that are prefixes of each other, or hold 0x00, keep their fields
// apart.
func Test_Hash_KeysDoNotMix(t *testing.T) {
	db := mustCollDB(t)
	for _, k := range []string{"a", "a\x00", "a\x00b", "ab", ""} {
		collExec(t, db, collNow, "hset", "h"+k, "f"+k, "v")
	}
	for _, k := range []string{"a", "a\x00", "a\x00b", "ab", ""} {
		if got := show(collExec(t, db, collNow, "hgetall", "h"+k)); got != "{"+show(BulkStr("f"+k))+` "v"}` {
			t.Errorf("hgetall h%q = %s", k, got)
		}
	}
}
