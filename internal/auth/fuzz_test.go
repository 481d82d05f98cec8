package auth

import (
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// Token parsing never panics, and a token it accepts is one signed with
// the secret, for a valid URN, not expired, spelled as it was signed.
func FuzzVerify(f *testing.F) {
	secret := []byte("fuzz-secret-0123456789abcdef0123")
	good, err := Sign(secret, "urn:sm:user:alice", time.Hour, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	other, _ := Sign([]byte("another-secret-0123456789abcdef0"), "urn:sm:user:alice", time.Hour, time.Now())
	f.Add(good)
	f.Add(other)
	f.Add("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1cm46c206dXNlcjphbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.")
	f.Add("a.b.c")
	f.Add("")
	v, err := NewVerifier(f.Context(), Options{Config: Config{Algorithms: []string{HS256}}, HS256Secret: secret})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(v.Close)
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(token)
		if err != nil {
			return
		}
		if envelope.ValidateURN(c.Subject) != nil || !c.ExpiresAt.After(time.Now()) {
			t.Fatalf("accepted %q with claims %+v", token, c)
		}
		// Strict base64url gives each signed token one spelling: the only
		// token signed with the secret here is good itself.
		if token != good {
			t.Fatalf("accepted %q, another spelling of a signed token", token)
		}
	})
}
