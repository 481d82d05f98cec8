package config

import "strings"

// KeyError is a problem with one configuration key. Key is the key's
// dotted YAML path ("bus.nats.url", "auth.algorithms[0]"), or the name of
// the environment variable it concerns ("DATABASE_URL").
type KeyError struct {
	Key string
	// Msg says what is wrong and what to do about it.
	Msg string
	// Err is the underlying error, if any (a file that cannot be read).
	Err error
}

func (e *KeyError) Error() string {
	switch {
	case e.Msg == "" && e.Err != nil:
		return "config key " + e.Key + ": " + e.Err.Error()
	case e.Err != nil:
		return "config key " + e.Key + ": " + e.Msg + ": " + e.Err.Error()
	}
	return "config key " + e.Key + ": " + e.Msg
}

func (e *KeyError) Unwrap() error { return e.Err }

// Under reports whether the error concerns key or a key beneath it: the
// error of "auth.algorithms[0]" is under "auth", "auth.algorithms" and
// itself, not under "au".
func (e *KeyError) Under(key string) bool {
	if !strings.HasPrefix(e.Key, key) {
		return false
	}
	rest := e.Key[len(key):]
	return rest == "" || rest[0] == '.' || rest[0] == '['
}

// Errors is every problem found in a configuration, in the order found.
// Check returns it (as an error) when it finds any; a nil or empty Errors
// is never returned as an error.
type Errors []*KeyError

// Error prints one problem a line, as errors.Join does.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap gives errors.Is and errors.As each problem.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// Under returns the problems that concern one of keys or a key beneath
// one of them (see KeyError.Under).
func (es Errors) Under(keys ...string) Errors {
	var out Errors
	for _, e := range es {
		for _, k := range keys {
			if e.Under(k) {
				out = append(out, e)
				break
			}
		}
	}
	return out
}

// Err returns es as an error, nil when it is empty.
func (es Errors) Err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}
