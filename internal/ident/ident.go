// Package ident says which names the service accepts for the things it
// names itself or in its engines: an instance, a topic, a subscription, a
// NATS subject prefix, a PostgreSQL schema.
package ident

// MaxLen is the longest name Valid accepts.
const MaxLen = 64

// Valid reports whether s is 1 to MaxLen characters of [A-Za-z0-9_-]: a
// name that is safe as a NATS subject token, stream or consumer name, a
// Pub/Sub resource id, a PostgreSQL identifier (quoted) and a Redis key
// part alike.
func Valid(s string) bool {
	if len(s) < 1 || len(s) > MaxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Rule is what a name Valid refuses should have been, for messages:
// "must be " + Rule.
const Rule = "1-64 characters of [A-Za-z0-9_-]"
