package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

const (
	testIssuer   = "https://issuer.test"
	testAudience = "routing"
	testSub      = "urn:sm:user:alice"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// signingKey is a private key with the kid and algorithm it signs under.
type signingKey struct {
	kid    string
	method jwt.SigningMethod
	priv   crypto.Signer
}

func (k signingKey) jwk(t testing.TB) jwkset.JWKMarshal {
	t.Helper()
	j, err := jwkset.NewJWKFromKey(k.priv.Public(), jwkset.JWKOptions{
		Metadata: jwkset.JWKMetadataOptions{KID: k.kid, ALG: jwkset.ALG(k.method.Alg()), USE: jwkset.UseSig},
	})
	if err != nil {
		t.Fatalf("jwk %s: %v", k.kid, err)
	}
	return j.Marshal()
}

var (
	keysOnce sync.Once
	rsaKey   signingKey
	rsaKey2  signingKey // same kid as rsaKey, not in the set: a wrong signature
	ecKey    signingKey
	edKey    signingKey
	newKey   signingKey // published only after a rotation
)

func testKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		r1, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		r2, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		_, ed, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		ec2, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		rsaKey = signingKey{"rsa-1", jwt.SigningMethodRS256, r1}
		rsaKey2 = signingKey{"rsa-1", jwt.SigningMethodRS256, r2}
		ecKey = signingKey{"ec-1", jwt.SigningMethodES256, ec}
		edKey = signingKey{"ed-1", jwt.SigningMethodEdDSA, ed}
		newKey = signingKey{"ec-2", jwt.SigningMethodES256, ec2}
	})
}

// jwksServer serves a key set that tests can replace or break.
type jwksServer struct {
	*httptest.Server
	body     atomic.Pointer[[]byte]
	failing  atomic.Bool
	requests atomic.Int64
}

func newJWKSServer(t *testing.T, ks ...signingKey) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.set(t, ks...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if s.failing.Load() {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(*s.body.Load())
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(t *testing.T, ks ...signingKey) {
	t.Helper()
	doc := jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{}}
	for _, k := range ks {
		doc.Keys = append(doc.Keys, k.jwk(t))
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	s.body.Store(&b)
}

// fastTuning makes refetches quick enough for tests.
func fastTuning() keySetTuning {
	return keySetTuning{
		fetchTimeout:       5 * time.Second,
		unknownKIDInterval: 10 * time.Millisecond,
		retryMin:           10 * time.Millisecond,
		retryMax:           50 * time.Millisecond,
	}
}

func newTestVerifier(t *testing.T, o Options, tune keySetTuning) *Verifier {
	t.Helper()
	v, err := newVerifier(t.Context(), o, tune)
	if err != nil {
		t.Fatalf("newVerifier: %v", err)
	}
	t.Cleanup(v.Close)
	return v
}

func goodClaims(now time.Time) jwt.MapClaims {
	return jwt.MapClaims{
		"sub": testSub,
		"iss": testIssuer,
		"aud": testAudience,
		"iat": now.Unix(),
		"nbf": now.Add(-time.Minute).Unix(),
		"exp": now.Add(time.Hour).Unix(),
	}
}

func with(c jwt.MapClaims, k string, v any) jwt.MapClaims {
	out := jwt.MapClaims{}
	for kk, vv := range c {
		out[kk] = vv
	}
	if v == nil {
		delete(out, k)
	} else {
		out[k] = v
	}
	return out
}

func sign(t testing.TB, k signingKey, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(k.method, c)
	if k.kid != "" {
		tok.Header["kid"] = k.kid
	}
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatalf("sign %s: %v", k.kid, err)
	}
	return s
}

func signHS(t testing.TB, secret []byte, kid string, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVerify(t *testing.T) {
	testKeys(t)
	srv := newJWKSServer(t, rsaKey, ecKey, edKey)
	full := newTestVerifier(t, Options{
		Config: Config{
			Algorithms: []string{HS256, RS256, ES256, EdDSA},
			JWKSURL:    srv.URL,
			Issuer:     testIssuer,
			Audience:   testAudience,
		},
		HS256Secret: testSecret,
	}, fastTuning())
	rsOnly := newTestVerifier(t, Options{Config: Config{Algorithms: []string{RS256}, JWKSURL: srv.URL}}, fastTuning())
	hsOnly := newTestVerifier(t, Options{Config: Config{Algorithms: []string{HS256}}, HS256Secret: testSecret}, fastTuning())

	now := time.Now()
	good := goodClaims(now)
	plain := jwt.MapClaims{"sub": testSub, "exp": now.Add(time.Hour).Unix()}

	pubDER, err := x509.MarshalPKIXPublicKey(rsaKey.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	rsaJWK, err := json.Marshal(rsaKey.jwk(t))
	if err != nil {
		t.Fatal(err)
	}
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, good).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	goodRS := sign(t, rsaKey, good)
	parts := strings.Split(goodRS, ".")

	tests := []struct {
		name  string
		v     *Verifier
		token string
		ok    bool
	}{
		{"HS256", full, signHS(t, testSecret, "", good), true},
		{"RS256", full, goodRS, true},
		{"ES256", full, sign(t, ecKey, good), true},
		{"EdDSA", full, sign(t, edKey, good), true},
		{"RS256 only", rsOnly, sign(t, rsaKey, plain), true},
		{"HS256 only", hsOnly, signHS(t, testSecret, "", plain), true},
		{"RS256 without kid, one RSA key", rsOnly, sign(t, signingKey{"", rsaKey.method, rsaKey.priv}, plain), true},

		{"missing exp", full, sign(t, rsaKey, with(good, "exp", nil)), false},
		{"missing exp HS256", hsOnly, signHS(t, testSecret, "", with(plain, "exp", nil)), false},
		{"expired", full, sign(t, ecKey, with(good, "exp", now.Add(-time.Minute).Unix())), false},
		{"nbf in the future", full, sign(t, edKey, with(good, "nbf", now.Add(time.Minute).Unix())), false},
		{"wrong iss", full, sign(t, rsaKey, with(good, "iss", "https://evil.test")), false},
		{"missing iss", full, sign(t, rsaKey, with(good, "iss", nil)), false},
		{"wrong aud", full, sign(t, rsaKey, with(good, "aud", "other")), false},
		{"missing aud", full, sign(t, rsaKey, with(good, "aud", nil)), false},
		{"wrong signature (other RSA key, same kid)", full, sign(t, rsaKey2, good), false},
		{"wrong HS256 secret", full, signHS(t, []byte("another-secret-another-secret-xx"), "", good), false},
		{"tampered payload", full, parts[0] + "." + jwtSegment(t, with(good, "sub", "urn:sm:user:mallory")) + "." + parts[2], false},
		{"signature stripped", full, parts[0] + "." + parts[1] + ".", false},
		{"alg none", full, none, false},
		{"alg none RS256 only", rsOnly, none, false},
		{"HS256 when only RS256 configured", rsOnly, signHS(t, testSecret, "", plain), false},
		{"RSA public key PEM as HMAC secret", rsOnly, signHS(t, pubPEM, rsaKey.kid, plain), false},
		{"RSA public key PEM as HMAC secret, HS256 also configured", full, signHS(t, pubPEM, rsaKey.kid, good), false},
		{"RSA public key DER as HMAC secret", full, signHS(t, pubDER, rsaKey.kid, good), false},
		{"RSA JWK JSON as HMAC secret", full, signHS(t, rsaJWK, rsaKey.kid, good), false},
		{"ES256 token naming the RSA kid", full, sign(t, signingKey{rsaKey.kid, ecKey.method, ecKey.priv}, good), false},
		{"unknown kid", full, sign(t, newKey, good), false},
		{"ES256 when only RS256 configured", rsOnly, sign(t, ecKey, plain), false},
		{"EdDSA without kid, HS256 only", hsOnly, sign(t, signingKey{"", edKey.method, edKey.priv}, plain), false},
		{"bad sub URN", full, sign(t, rsaKey, with(good, "sub", "alice")), false},
		{"sub with bad id characters", full, signHS(t, testSecret, "", with(good, "sub", "urn:sm:user:al ice")), false},
		{"missing sub", full, sign(t, rsaKey, with(good, "sub", nil)), false},
		{"sub not a string", full, sign(t, rsaKey, with(good, "sub", 42)), false},
		{"exp not a number", full, sign(t, rsaKey, with(good, "exp", "tomorrow")), false},
		{"empty", full, "", false},
		{"garbage", full, "not a token", false},
		{"three dots", full, "a.b.c", false},
		{"empty segments", full, "..", false},
		{"two segments", full, parts[0] + "." + parts[1], false},
		{"four segments", full, goodRS + ".x", false},
		{"bad base64 header", full, "!!!." + parts[1] + "." + parts[2], false},
		{"JSON array header", full, jwtSegment(t, []int{1}) + "." + parts[1] + "." + parts[2], false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.v.Verify(tc.token)
			if tc.ok {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if c.Subject != testSub {
					t.Errorf("Subject = %q, want %q", c.Subject, testSub)
				}
				if d := c.ExpiresAt.Sub(now.Add(time.Hour)); d < -time.Second || d > time.Second {
					t.Errorf("ExpiresAt = %v, want about %v", c.ExpiresAt, now.Add(time.Hour))
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify accepted the token (claims %+v)", c)
			}
			if !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("Verify error %v does not wrap ErrInvalidToken", err)
			}
			t.Logf("refused: %v", err)
		})
	}
}

func jwtSegment(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestLeeway(t *testing.T) {
	v := newTestVerifier(t, Options{Config: Config{Algorithms: []string{HS256}, Leeway: 30 * time.Second}, HS256Secret: testSecret}, fastTuning())
	now := time.Now()
	within := jwt.MapClaims{"sub": testSub, "exp": now.Add(-10 * time.Second).Unix()}
	if _, err := v.Verify(signHS(t, testSecret, "", within)); err != nil {
		t.Errorf("token expired 10s ago with 30s leeway: %v", err)
	}
	beyond := jwt.MapClaims{"sub": testSub, "exp": now.Add(-time.Minute).Unix()}
	if _, err := v.Verify(signHS(t, testSecret, "", beyond)); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("token expired 1m ago with 30s leeway: got %v, want ErrInvalidToken", err)
	}
	early := jwt.MapClaims{"sub": testSub, "exp": now.Add(time.Hour).Unix(), "nbf": now.Add(10 * time.Second).Unix()}
	if _, err := v.Verify(signHS(t, testSecret, "", early)); err != nil {
		t.Errorf("nbf 10s ahead with 30s leeway: %v", err)
	}
}

func TestSignRoundTrip(t *testing.T) {
	v := newTestVerifier(t, Options{Config: Config{Algorithms: []string{HS256}}, HS256Secret: testSecret}, fastTuning())
	now := time.Now()
	tok, err := Sign(testSecret, testSub, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(tok)
	if err != nil {
		t.Fatalf("Verify(Sign(...)): %v", err)
	}
	if c.Subject != testSub || c.ExpiresAt.Unix() != now.Add(time.Hour).Unix() {
		t.Fatalf("claims = %+v", c)
	}
	expired, err := Sign(testSecret, testSub, time.Minute, now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(expired); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("expired signed token: got %v, want ErrInvalidToken", err)
	}
	for name, call := range map[string]func() (string, error){
		"empty secret": func() (string, error) { return Sign(nil, testSub, time.Hour, now) },
		"zero ttl":     func() (string, error) { return Sign(testSecret, testSub, 0, now) },
		"bad sub":      func() (string, error) { return Sign(testSecret, "bob", time.Hour, now) },
	} {
		if _, err := call(); err == nil {
			t.Errorf("Sign with %s succeeded", name)
		}
	}
}

func TestNewVerifierRejectsBadOptions(t *testing.T) {
	tests := map[string]Options{
		"no algorithms":        {HS256Secret: testSecret},
		"unknown algorithm":    {Config: Config{Algorithms: []string{"HS512"}}, HS256Secret: testSecret},
		"alg none":             {Config: Config{Algorithms: []string{"none"}}},
		"HS256 without secret": {Config: Config{Algorithms: []string{HS256}}},
		"RS256 without JWKS":   {Config: Config{Algorithms: []string{RS256}}},
		"negative leeway":      {Config: Config{Algorithms: []string{HS256}, Leeway: -time.Second}, HS256Secret: testSecret},
	}
	for name, o := range tests {
		t.Run(name, func(t *testing.T) {
			if v, err := NewVerifier(t.Context(), o); err == nil {
				v.Close()
				t.Fatal("NewVerifier accepted the options")
			}
		})
	}
}

// waitVerify polls until Verify accepts token (want true) or refuses it.
func waitVerify(t *testing.T, v *Verifier, token string, want bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := v.Verify(token)
		if (err == nil) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Verify still %v after 10s, want accepted=%v", err, want)
		}
		<-tick.C
	}
}

// waitRequests polls, calling each before every check, until srv has
// served at least n requests.
func waitRequests(t *testing.T, srv *jwksServer, n int64, each func()) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for srv.requests.Load() < n {
		each()
		if time.Now().After(deadline) {
			t.Fatalf("key set served %d requests in 10s, want %d", srv.requests.Load(), n)
		}
		<-tick.C
	}
}

func TestJWKSUnknownKIDRefetch(t *testing.T) {
	testKeys(t)
	srv := newJWKSServer(t, rsaKey)
	v := newTestVerifier(t, Options{Config: Config{Algorithms: []string{RS256, ES256}, JWKSURL: srv.URL, JWKSRefresh: time.Hour}}, fastTuning())
	tok := sign(t, newKey, jwt.MapClaims{"sub": testSub, "exp": time.Now().Add(time.Hour).Unix()})
	if _, err := v.Verify(tok); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("token with a kid not yet published: got %v, want ErrInvalidToken", err)
	}
	// The provider rotates in a new key: the unknown kid triggers a fetch
	// long before the hourly refresh.
	srv.set(t, rsaKey, newKey)
	waitVerify(t, v, tok, true)
}

func TestJWKSUnknownKIDRateLimited(t *testing.T) {
	testKeys(t)
	srv := newJWKSServer(t, rsaKey)
	tune := fastTuning()
	tune.unknownKIDInterval = 100 * time.Millisecond
	v := newTestVerifier(t, Options{Config: Config{Algorithms: []string{ES256}, JWKSURL: srv.URL, JWKSRefresh: time.Hour}}, tune)
	tok := sign(t, newKey, jwt.MapClaims{"sub": testSub, "exp": time.Now().Add(time.Hour).Unix()})
	start := time.Now()
	for time.Since(start) < 500*time.Millisecond {
		if _, err := v.Verify(tok); err == nil {
			t.Fatal("token with an unknown kid accepted")
		}
	}
	elapsed := time.Since(start)
	v.Close()
	// One fetch at start, then at most one per interval however many tokens.
	got := srv.requests.Load()
	limit := 2 + int64(elapsed/tune.unknownKIDInterval)
	if got < 2 || got > limit {
		t.Fatalf("%d key set fetches in %v of unknown-kid tokens, want between 2 and %d", got, elapsed, limit)
	}
}

func TestJWKSPeriodicRefreshRevokes(t *testing.T) {
	testKeys(t)
	srv := newJWKSServer(t, rsaKey, edKey)
	v := newTestVerifier(t, Options{Config: Config{Algorithms: []string{RS256, EdDSA}, JWKSURL: srv.URL, JWKSRefresh: 20 * time.Millisecond}}, fastTuning())
	tok := sign(t, edKey, jwt.MapClaims{"sub": testSub, "exp": time.Now().Add(time.Hour).Unix()})
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	srv.set(t, rsaKey)
	waitVerify(t, v, tok, false)
}

func TestJWKSUnreachableAtStart(t *testing.T) {
	testKeys(t)
	srv := newJWKSServer(t, rsaKey)
	srv.failing.Store(true)
	v := newTestVerifier(t, Options{
		Config: Config{Algorithms: []string{HS256, RS256}, JWKSURL: srv.URL, JWKSRefresh: time.Hour}, HS256Secret: testSecret,
	}, fastTuning())
	if err := v.Ready(); err == nil {
		t.Fatal("Ready with no key set loaded")
	}
	claims := jwt.MapClaims{"sub": testSub, "exp": time.Now().Add(time.Hour).Unix()}
	if _, err := v.Verify(signHS(t, testSecret, "", claims)); err != nil {
		t.Fatalf("HS256 while the JWKS is down: %v", err)
	}
	rs := sign(t, rsaKey, claims)
	if _, err := v.Verify(rs); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("RS256 before the key set loaded: got %v, want ErrInvalidToken", err)
	}
	srv.failing.Store(false)
	waitVerify(t, v, rs, true)
	if err := v.Ready(); err != nil {
		t.Fatalf("Ready after load: %v", err)
	}
	// A failed refresh keeps the keys already loaded.
	srv.failing.Store(true)
	n := srv.requests.Load()
	waitRequests(t, srv, n+2, v.jwks.requestFetch)
	if _, err := v.Verify(rs); err != nil {
		t.Fatalf("RS256 after a failed refresh: %v", err)
	}
}

func TestJWKSSkipsUnusableKeys(t *testing.T) {
	testKeys(t)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srv := newJWKSServer(t, ecKey)
	enc := rsaKey.jwk(t)
	enc.KID, enc.USE = "enc-1", jwkset.UseEnc
	mislabelled := edKey.jwk(t)
	mislabelled.KID, mislabelled.ALG = "mislabelled", jwkset.AlgRS256
	extra := []jwkset.JWKMarshal{enc, mislabelled, ecKey.jwk(t)}
	for _, k := range []signingKey{{"small", jwt.SigningMethodRS256, small}, {"p384", jwt.SigningMethodES384, p384}} {
		j, err := jwkset.NewJWKFromKey(k.priv.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: k.kid}})
		if err != nil {
			t.Fatal(err)
		}
		extra = append(extra, j.Marshal())
	}
	b, err := json.Marshal(jwkset.JWKSMarshal{Keys: extra})
	if err != nil {
		t.Fatal(err)
	}
	srv.body.Store(&b)
	v := newTestVerifier(t, Options{Config: Config{Algorithms: []string{RS256, ES256, EdDSA}, JWKSURL: srv.URL}}, fastTuning())
	claims := jwt.MapClaims{"sub": testSub, "exp": time.Now().Add(time.Hour).Unix()}
	if _, err := v.Verify(sign(t, ecKey, claims)); err != nil {
		t.Fatalf("the good key beside unusable ones: %v", err)
	}
	for _, k := range []signingKey{
		{"enc-1", jwt.SigningMethodRS256, rsaKey.priv},
		{"mislabelled", jwt.SigningMethodEdDSA, edKey.priv},
		{"small", jwt.SigningMethodRS256, small},
	} {
		if _, err := v.Verify(sign(t, k, claims)); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("token under unusable key %s: got %v, want ErrInvalidToken", k.kid, err)
		}
	}
}

func TestCloseStopsRefresh(t *testing.T) {
	testKeys(t)
	srv := newJWKSServer(t, rsaKey)
	v := newTestVerifier(t, Options{Config: Config{Algorithms: []string{RS256}, JWKSURL: srv.URL, JWKSRefresh: time.Millisecond}}, fastTuning())
	waitRequests(t, srv, 3, func() {})
	v.Close()
	n := srv.requests.Load()
	// Close waits for the refresher to end: nothing fetches after it returns.
	v.jwks.requestFetch()
	select {
	case <-v.jwks.done:
	default:
		t.Fatal("refresher still running after Close")
	}
	if got := srv.requests.Load(); got != n {
		t.Fatalf("%d fetches after Close", got-n)
	}
	v.Close() // idempotent
}

// BenchmarkVerifyHS256 verifies one token again and again, as a client's
// requests do: after the first, a lookup of the verified token.
func BenchmarkVerifyHS256(b *testing.B) {
	v, err := NewVerifier(b.Context(), Options{Config: Config{Algorithms: []string{HS256}, Leeway: 30 * time.Second}, HS256Secret: testSecret})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	tok, err := Sign(testSecret, testSub, time.Hour, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyES256(b *testing.B) {
	testKeys(b)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{ecKey.jwk(b)}})
	}))
	defer srv.Close()
	v, err := NewVerifier(b.Context(), Options{Config: Config{Algorithms: []string{ES256}, JWKSURL: srv.URL}})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	tok := sign(b, ecKey, jwt.MapClaims{"sub": testSub, "exp": time.Now().Add(time.Hour).Unix()})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// A token verified once is taken on trust for a while, but never past its
// expiry (plus the leeway), never for other bytes (a changed signature),
// and not after verifiedTTL without being verified again.
func TestVerifiedTokensStillExpire(t *testing.T) {
	v, err := NewVerifier(t.Context(), Options{Config: Config{Algorithms: []string{HS256}, Leeway: time.Second}, HS256Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	start := time.Now()
	now := start
	v.now = func() time.Time { return now }
	tok, err := Sign(testSecret, testSub, 10*time.Second, start)
	if err != nil {
		t.Fatal(err)
	}
	first, err := v.Verify(tok)
	if err != nil || first.Subject != testSub {
		t.Fatalf("first Verify = %+v, %v", first, err)
	}
	exp := first.ExpiresAt // whole seconds
	if _, ok := v.trusted(keyOf(tok), now, nil); !ok {
		t.Fatal("a verified token is not remembered")
	}
	// Other bytes: one character of the signature changed.
	c := byte('A')
	if tok[len(tok)-2] == 'A' {
		c = 'B'
	}
	forged := tok[:len(tok)-2] + string(c) + tok[len(tok)-1:]
	if _, err := v.Verify(forged); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("a token with another signature was accepted: %v", err)
	}
	now = exp.Add(500 * time.Millisecond) // past exp, within the leeway
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("within the leeway: %v", err)
	}
	now = exp.Add(time.Second + time.Millisecond) // past exp plus the leeway
	if _, err := v.Verify(tok); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("a remembered token was accepted past its expiry: %v", err)
	}

	long, err := Sign(testSecret, testSub, time.Hour, start)
	if err != nil {
		t.Fatal(err)
	}
	now = start
	if _, err := v.Verify(long); err != nil {
		t.Fatal(err)
	}
	now = start.Add(verifiedTTL)
	if _, ok := v.trusted(keyOf(long), now, nil); ok {
		t.Fatal("a token is taken on trust past verifiedTTL")
	}
	if _, err := v.Verify(long); err != nil {
		t.Fatalf("verifying again after verifiedTTL: %v", err)
	}
}

// BenchmarkVerifyHS256Fresh verifies tokens never seen before: the whole
// signature check.
func BenchmarkVerifyHS256Fresh(b *testing.B) {
	v, err := NewVerifier(b.Context(), Options{Config: Config{Algorithms: []string{HS256}, Leeway: 30 * time.Second}, HS256Secret: testSecret})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	toks := make([]string, 1024)
	for i := range toks {
		if toks[i], err = Sign(testSecret, testSub, time.Hour+time.Duration(i)*time.Second, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		v.mu.Lock()
		clear(v.verified)
		v.mu.Unlock()
		if _, err := v.Verify(toks[i%len(toks)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// A JWKS URL that redirects is not followed: keys served at the redirect's
// target (an attacker's, or an internal address) are never loaded.
func TestJWKSRedirectNotFollowed(t *testing.T) {
	testKeys(t)
	target := newJWKSServer(t, rsaKey)
	redirects := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL, http.StatusFound)
	}))
	t.Cleanup(redirects.Close)
	v := newTestVerifier(t, Options{
		Config: Config{Algorithms: []string{HS256, RS256}, JWKSURL: redirects.URL, JWKSRefresh: time.Hour}, HS256Secret: testSecret,
	}, fastTuning())
	rs := sign(t, rsaKey, jwt.MapClaims{"sub": testSub, "exp": time.Now().Add(time.Hour).Unix()})
	// Each unknown key id asks for a refetch: let a few happen.
	for range 3 {
		_, _ = v.Verify(rs)
		v.jwks.requestFetch()
	}
	if err := v.Ready(); err == nil {
		t.Fatal("Ready: a key set was loaded through a redirect")
	}
	if _, err := v.Verify(rs); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("RS256 signed with the redirect target's key: %v, want ErrInvalidToken", err)
	}
	if n := target.requests.Load(); n != 0 {
		t.Fatalf("the redirect target got %d requests", n)
	}
}

// With a maximum token age, a token issued longer ago is refused even
// though its exp is far away (also once it was taken on trust), and a
// token without iat is refused.
func TestMaxTokenAge(t *testing.T) {
	now := time.Now()
	v := newTestVerifier(t, Options{Config: Config{Algorithms: []string{HS256}, MaxTokenAge: time.Hour}, HS256Secret: testSecret}, fastTuning())
	clock := now
	v.now = func() time.Time { return clock }
	exp := now.Add(24 * time.Hour).Unix()
	fresh := signHS(t, testSecret, "", jwt.MapClaims{"sub": testSub, "exp": exp, "iat": now.Add(-30 * time.Minute).Unix()})
	if _, err := v.Verify(fresh); err != nil {
		t.Fatalf("a token 30 minutes old: %v", err)
	}
	old := signHS(t, testSecret, "", jwt.MapClaims{"sub": testSub, "exp": exp, "iat": now.Add(-2 * time.Hour).Unix()})
	if _, err := v.Verify(old); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("a token 2 hours old: %v, want ErrInvalidToken", err)
	}
	noIAT := signHS(t, testSecret, "", jwt.MapClaims{"sub": testSub, "exp": exp})
	if _, err := v.Verify(noIAT); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("a token without iat: %v, want ErrInvalidToken", err)
	}
	// The token accepted above stops at its maximum age, not at its exp.
	clock = now.Add(31 * time.Minute)
	if _, err := v.Verify(fresh); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("the first token once over an hour old: %v, want ErrInvalidToken", err)
	}
}

// withTrailingBits returns seg, an unpadded base64url segment, with the
// unused low bits of its last character set: another string that a lax
// decoder turns into the same bytes.
func withTrailingBits(t *testing.T, seg string) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	var unused int // bits of the last character that carry no data
	switch len(seg) % 4 {
	case 2:
		unused = 4
	case 3:
		unused = 2
	default:
		t.Fatalf("segment of %d characters has no unused bits", len(seg))
	}
	i := strings.IndexByte(alphabet, seg[len(seg)-1])
	if i < 0 || i&(1<<unused-1) != 0 {
		t.Fatalf("segment %q is not canonical base64url", seg)
	}
	return seg[:len(seg)-1] + string(alphabet[i|1])
}

// A signature segment re-encoded with its unused trailing bits set, or
// with padding, decodes to the very signature bytes under a lax decoder,
// so the token would verify under a second spelling. Strict decoding
// refuses both spellings, before and after the canonical token was
// verified (and taken on trust).
func TestNonCanonicalBase64Refused(t *testing.T) {
	testKeys(t)
	srv := newJWKSServer(t, ecKey)
	o := Options{Config: Config{Algorithms: []string{HS256, ES256}, JWKSURL: srv.URL}, HS256Secret: testSecret}
	claims := jwt.MapClaims{"sub": testSub, "exp": time.Now().Add(time.Hour).Unix()}
	for _, tc := range []struct {
		name  string
		token string
		key   any
	}{
		{"HS256", signHS(t, testSecret, "", claims), testSecret},
		{"ES256", sign(t, ecKey, claims), ecKey.priv.Public()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dot := strings.LastIndexByte(tc.token, '.')
			signed, sig := tc.token[:dot], tc.token[dot+1:]
			want, err := base64.RawURLEncoding.DecodeString(sig)
			if err != nil {
				t.Fatal(err)
			}
			padded := base64.URLEncoding.EncodeToString(want)
			if padded == sig {
				t.Fatal("the signature needs no padding: pick another length")
			}
			for _, variant := range []struct {
				name string
				sig  string
				lax  []jwt.ParserOption // a parser that accepts this spelling
			}{
				{"trailing bits set", withTrailingBits(t, sig), nil},
				{"padded", padded, []jwt.ParserOption{jwt.WithPaddingAllowed()}},
			} {
				forged := signed + "." + variant.sig
				// The attack: a lax parser takes the other spelling for the
				// same signature and accepts the token.
				lax := jwt.NewParser(append(variant.lax, jwt.WithValidMethods([]string{HS256, ES256}))...)
				if _, err := lax.Parse(forged, func(*jwt.Token) (any, error) { return tc.key, nil }); err != nil {
					t.Fatalf("%s: a lax parser refuses it (%v): the test shows nothing", variant.name, err)
				}
				fresh := newTestVerifier(t, o, fastTuning())
				if _, err := fresh.Verify(forged); !errors.Is(err, ErrInvalidToken) {
					t.Fatalf("%s, never seen: Verify = %v, want ErrInvalidToken", variant.name, err)
				}
				if _, err := fresh.Verify(tc.token); err != nil {
					t.Fatalf("the canonical token: %v", err)
				}
				if _, err := fresh.Verify(forged); !errors.Is(err, ErrInvalidToken) {
					t.Fatalf("%s, after the canonical token was verified: Verify = %v, want ErrInvalidToken", variant.name, err)
				}
			}
		})
	}
}

// The verified-token cache is keyed by the token's SHA-256: neither its
// keys nor its values hold the token or any of its segments, and a token
// taken on trust still stops at its expiry.
func TestVerifiedCacheHoldsNoToken(t *testing.T) {
	v := newTestVerifier(t, Options{Config: Config{Algorithms: []string{HS256}}, HS256Secret: testSecret}, fastTuning())
	start := time.Now()
	now := start
	v.now = func() time.Time { return now }
	tok, err := Sign(testSecret, testSub, 10*time.Second, start)
	if err != nil {
		t.Fatal(err)
	}
	first, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	v.mu.Lock()
	entries := maps.Clone(v.verified)
	v.mu.Unlock()
	if len(entries) != 1 {
		t.Fatalf("%d cache entries, want 1", len(entries))
	}
	for k, vt := range entries {
		if k != tokenKey(sha256.Sum256([]byte(tok))) {
			t.Errorf("cache key %x is not the token's SHA-256", k)
		}
		dump := fmt.Sprintf("%s %x %#v", k[:], k[:], vt)
		for _, seg := range strings.Split(tok, ".") {
			if strings.Contains(dump, seg) {
				t.Errorf("the cache entry holds the token segment %q: %s", seg, dump)
			}
		}
		if vt.claims != first {
			t.Errorf("cached claims %+v, want %+v", vt.claims, first)
		}
	}
	// Taken on trust (no signature check) until its expiry, not after.
	v.hsKey = []byte("another secret: a full verification would fail")
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("a cached token within its lifetime: %v", err)
	}
	now = first.ExpiresAt.Add(time.Millisecond)
	if _, err := v.Verify(tok); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("a cached token past its expiry: %v, want ErrInvalidToken", err)
	}
}
