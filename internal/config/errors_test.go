package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// Check reports each problem as a *KeyError naming its key, printed as
// "config key <key>: <message>", and callers keep the problems of the keys
// they use with Errors.Under.
func TestCheckReturnsKeyErrors(t *testing.T) {
	c := Default()
	c.DataDir = t.TempDir()
	c.JWTSecret = "errors-test-secret-0123456789-0123456789"
	c.FillDefaults()
	c.RunMode = "staging"
	c.Auth.Algorithms = []string{"HS256", "XX999"}
	c.Store.Type = "postgres" // DATABASE_URL unset
	c.Admin.Socket = ""
	c.Presence.Type = "redis"
	c.Presence.Redis.Addr = ""
	err := c.Check()
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("Check returned %T, want config.Errors: %v", err, err)
	}
	keys := func(es Errors) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.Key)
		}
		slices.Sort(out)
		return out
	}
	if got, want := keys(es), []string{"auth.algorithms[1]", "auth.jwks_url", "presence.redis.addr", "run_mode", "store.type"}; !slices.Equal(got, want) {
		t.Fatalf("keys %v, want %v", got, want)
	}
	for _, e := range es {
		if !strings.HasPrefix(e.Error(), "config key "+e.Key+": ") || e.Msg == "" {
			t.Errorf("error %q does not name its key %s first", e.Error(), e.Key)
		}
		if !strings.Contains(err.Error(), e.Error()) {
			t.Errorf("the joined message lacks %q", e.Error())
		}
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != len(es) {
		t.Errorf("the message has %d lines for %d problems", n, len(es))
	}
	var ke *KeyError
	if !errors.As(err, &ke) || ke.Key == "" {
		t.Fatal("errors.As finds no *KeyError in the joined error")
	}

	cases := []struct {
		under []string
		want  []string
	}{
		{[]string{"auth"}, []string{"auth.algorithms[1]", "auth.jwks_url"}},
		{[]string{"auth.algorithms"}, []string{"auth.algorithms[1]"}},
		{[]string{"auth.algorithms[1]"}, []string{"auth.algorithms[1]"}},
		{[]string{"au", "auth.alg", "store.typ"}, nil},
		{[]string{"run_mode", "presence"}, []string{"presence.redis.addr", "run_mode"}},
		{[]string{"data_dir", "admin"}, nil},
	}
	for _, c := range cases {
		got := es.Under(c.under...)
		if !slices.Equal(keys(got), c.want) {
			t.Errorf("Under(%v) = %v, want %v", c.under, keys(got), c.want)
		}
		if (got.Err() == nil) != (len(c.want) == 0) {
			t.Errorf("Under(%v).Err() = %v", c.under, got.Err())
		}
	}
	if err := (Default()).Check(); err == nil {
		t.Fatal("Check accepted a configuration without its derived defaults")
	}
}

// A KeyError with an underlying error prints it after the message and
// unwraps to it.
func TestKeyErrorWrapsItsCause(t *testing.T) {
	cause := errors.New("permission denied")
	e := &KeyError{Key: "data_dir", Msg: "local JWT secret", Err: cause}
	if got, want := e.Error(), "config key data_dir: local JWT secret: permission denied"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(e, cause) {
		t.Fatal("KeyError does not unwrap to its cause")
	}
	if got, want := (&KeyError{Key: "push.ca_file", Err: cause}).Error(), "config key push.ca_file: permission denied"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	var nilErrs Errors
	if nilErrs.Err() != nil {
		t.Fatal("an empty Errors is an error")
	}
}
