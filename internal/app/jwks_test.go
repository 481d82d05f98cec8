package app_test

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/pkg/client"
)

// With a JWKS URL configured, the running service accepts RS256 tokens
// signed with a key of the set, reports the key set in /readyz, and still
// refuses tokens signed with other keys.
func TestJWKSTokens(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig",
		"n": b64(key.N.Bytes()), "e": b64(big.NewInt(int64(key.E)).Bytes()),
	}}})
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(jwks)
	}))
	defer idp.Close()
	ta := startApp(t, func(c *config.Config) {
		c.Auth.Algorithms = []string{"HS256", "RS256"}
		c.Auth.JWKSURL = idp.URL
	})
	eventually(t, "the key set loaded (/readyz)", func() bool { return get(t, ta.opsURL+"/readyz") == http.StatusOK })

	sign := func(k *rsa.PrivateKey) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
			"sub": "urn:sm:user:oidc", "exp": time.Now().Add(time.Hour).Unix(),
		})
		tok.Header["kid"] = "k1"
		s, err := tok.SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	c := &client.Client{APIURL: ta.apiURL, Token: sign(key)}
	if _, err := c.Fetch(ctxT(t), "", 1); err != nil {
		t.Fatalf("RS256 token from the key set refused: %v", err)
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	c.Token = sign(other)
	if _, err := c.Fetch(ctxT(t), "", 1); apiErr(t, err).Status != http.StatusUnauthorized {
		t.Fatalf("token signed with another key: %v", err)
	}
}
