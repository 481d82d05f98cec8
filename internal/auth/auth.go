// Package auth verifies the JWTs that authenticate every /v1/ request: HS256
// with a shared secret, and RS256, ES256 and EdDSA with public keys fetched
// from a JWKS URL.
//
// The accepted algorithms are fixed when the Verifier is made. A token whose
// header names any other algorithm (alg "none" included) is refused before
// any key is looked at, and each algorithm only ever gets a key of its own
// kind: HS256 gets the configured secret and nothing else, the asymmetric
// algorithms get only JWKS keys of the matching type. That closes algorithm
// confusion (an HS256 token "signed" with an RSA public key's bytes).
package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// ErrInvalidToken is returned, wrapping the detail, for every token that is
// not accepted: malformed, expired, not yet valid, wrongly signed, signed
// with an algorithm or key that is not accepted, or naming an invalid
// subject. Compare with errors.Is.
var ErrInvalidToken = errors.New("invalid token")

// Algorithms the Verifier can be configured with.
const (
	HS256 = "HS256"
	RS256 = "RS256"
	ES256 = "ES256"
	EdDSA = "EdDSA"
)

// Options configure a Verifier.
type Options struct {
	// Config holds auth.* of config.yaml: the Algorithms accepted (HS256,
	// RS256, ES256, EdDSA; at least one); the JWKSURL that serves the
	// public keys of RS256, ES256 and EdDSA tokens (required when
	// Algorithms has any of them), fetched again every JWKSRefresh
	// (default 1h); the Issuer that, when set, must equal the token's iss
	// and the Audience that must be one of its aud; the Leeway tolerated
	// on exp, nbf and iat for clock skew; and MaxTokenAge, which when
	// positive requires an iat claim and refuses tokens issued longer ago
	// than that (plus Leeway), whatever their exp says.
	Config
	// HS256Secret verifies HS256 tokens; required when Algorithms has HS256.
	HS256Secret []byte
	// HTTPClient fetches the key set (default: a zero http.Client); a
	// copy is used that follows no redirect.
	HTTPClient *http.Client
	// Logger gets the hint about tokens signed with another HS256 secret
	// (default: slog.Default()).
	Logger *slog.Logger
}

// Claims are the verified claims the service uses.
type Claims struct {
	// Subject is the caller's URN (validated by envelope.ValidateURN).
	Subject string
	// ExpiresAt is when the token stops being valid.
	ExpiresAt time.Time
}

// Verifier checks tokens. It is safe for concurrent use. Close stops its key
// set refresh.
type Verifier struct {
	parser  *jwt.Parser
	hsKey   any // the secret, boxed once so key lookups do not allocate
	keyfunc jwt.Keyfunc
	jwks    *keySet // nil without JWKS algorithms
	leeway  time.Duration
	maxAge  time.Duration
	now     func() time.Time // the parser's clock too

	// verified remembers tokens that passed verification, so that a client
	// sending many requests with one token pays for its signature once per
	// verifiedTTL. Keyed by the SHA-256 of the whole token, never the token
	// itself: the cache holds no bearer token a memory dump could replay,
	// and any other bytes (another signature) hash to another key and are
	// verified in full.
	mu       sync.Mutex
	verified map[tokenKey]verifiedToken

	// otherSecret rate-limits the hint about tokens signed with another
	// HS256 secret (see hintOtherSecret).
	log         *slog.Logger
	otherSecret hintLimiter
}

// tokenKey is the verified-token cache's key for a token: its SHA-256.
// A collision-resistant hash, so that no forged token can be made to
// share the key of one that was verified; a bearer token carries a
// signature of at least 256 bits, so its hash gives nothing to guess it.
type tokenKey [sha256.Size]byte

func keyOf(token string) tokenKey { return sha256.Sum256([]byte(token)) }

// verifiedTTL bounds how long a verified token is taken on trust before it
// is verified again; a new load of the key set ends the trust at once (a
// key withdrawn from the set stops its tokens at the next refresh).
// maxVerified bounds the memory that takes.
const (
	verifiedTTL = time.Minute
	maxVerified = 4096
)

// verifiedToken is a token that passed verification: its claims, the
// window in which its time claims hold, and when it must be verified again.
type verifiedToken struct {
	claims    Claims
	notBefore time.Time
	recheck   time.Time
	keys      *keys // the key set it was verified with (nil without JWKS)
}

// NewVerifier checks o and returns a Verifier. When o configures a JWKS
// algorithm it fetches the key set once, bounded by ctx, and then keeps it
// fresh in the background until Close. A failed first fetch is logged, not
// returned: HS256 tokens verify at once, JWKS tokens fail with
// ErrInvalidToken until a retry (with backoff) loads the keys, and Ready
// reports the gap. A restart while the identity provider is down thus
// degrades only JWKS logins instead of keeping the whole service down.
func NewVerifier(ctx context.Context, o Options) (*Verifier, error) {
	return newVerifier(ctx, o, defaultKeySetTuning())
}

func newVerifier(ctx context.Context, o Options, tune keySetTuning) (*Verifier, error) {
	if len(o.Algorithms) == 0 {
		return nil, errors.New("auth: no algorithms configured")
	}
	var hs, asym bool
	for _, a := range o.Algorithms {
		switch a {
		case HS256:
			hs = true
		case RS256, ES256, EdDSA:
			asym = true
		default:
			return nil, fmt.Errorf("auth: unsupported algorithm %q (HS256, RS256, ES256, EdDSA)", a)
		}
	}
	if hs && len(o.HS256Secret) == 0 {
		return nil, errors.New("auth: HS256 needs a secret")
	}
	if asym && o.JWKSURL == "" {
		return nil, errors.New("auth: RS256, ES256 and EdDSA need a JWKS URL")
	}
	if o.Leeway < 0 {
		return nil, fmt.Errorf("auth: negative leeway %v", o.Leeway)
	}
	if o.MaxTokenAge < 0 {
		return nil, fmt.Errorf("auth: negative max token age %v", o.MaxTokenAge)
	}
	v := &Verifier{leeway: o.Leeway, maxAge: o.MaxTokenAge, now: time.Now, verified: map[tokenKey]verifiedToken{}, log: o.Logger}
	if v.log == nil {
		v.log = slog.Default()
	}
	popts := []jwt.ParserOption{
		// Strict base64url: no padding and no set trailing bits, so each
		// token has exactly one encoding and a signature cannot be altered
		// into another string that still verifies.
		jwt.WithStrictDecoding(),
		jwt.WithValidMethods(slices.Clone(o.Algorithms)),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(o.Leeway),
		jwt.WithTimeFunc(func() time.Time { return v.now() }),
	}
	if o.Issuer != "" {
		popts = append(popts, jwt.WithIssuer(o.Issuer))
	}
	if o.Audience != "" {
		popts = append(popts, jwt.WithAudience(o.Audience))
	}
	v.parser = jwt.NewParser(popts...)
	if hs {
		v.hsKey = slices.Clone(o.HS256Secret)
	}
	v.keyfunc = v.key
	if asym {
		refresh := o.JWKSRefresh
		if refresh <= 0 {
			refresh = time.Hour
		}
		// A redirect is an error, never followed (see jwksClient).
		v.jwks = startKeySet(ctx, o.JWKSURL, jwksClient(o.HTTPClient), refresh, tune, slog.Default().With("component", "auth"))
	}
	return v, nil
}

// Verify checks token and returns its claims. Every failure is ErrInvalidToken
// wrapping the reason. It never blocks on the network: a token whose key id
// is not in the key set fails, and asks for a (rate-limited) fetch of the
// key set in the background so that a rotated key is soon known.
func (v *Verifier) Verify(token string) (Claims, error) {
	now := v.now()
	var ks *keys
	if v.jwks != nil {
		ks = v.jwks.current.Load()
	}
	key := keyOf(token)
	if c, ok := v.trusted(key, now, ks); ok {
		return c, nil
	}
	var rc jwt.RegisteredClaims
	if t, err := v.parser.ParseWithClaims(token, &rc, v.keyfunc); err != nil {
		v.hintOtherSecret(t, &rc, err, now)
		return Claims{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if err := envelope.ValidateURN(rc.Subject); err != nil {
		return Claims{}, fmt.Errorf("%w: sub: %w", ErrInvalidToken, err)
	}
	// exp is required by the parser, so rc.ExpiresAt is set here.
	c := Claims{Subject: rc.Subject, ExpiresAt: rc.ExpiresAt.Time}
	if v.maxAge > 0 {
		if rc.IssuedAt == nil {
			return Claims{}, fmt.Errorf("%w: iat is required (auth.max_token_age)", ErrInvalidToken)
		}
		// The token is good until it is maxAge old or expires, whichever
		// comes first; the trust cache checks the same bound.
		if tooOld := rc.IssuedAt.Add(v.maxAge); tooOld.Before(c.ExpiresAt) {
			c.ExpiresAt = tooOld
		}
		if !now.Before(c.ExpiresAt.Add(v.leeway)) {
			return Claims{}, fmt.Errorf("%w: token is older than the maximum age %v", ErrInvalidToken, v.maxAge)
		}
	}
	vt := verifiedToken{claims: c, recheck: now.Add(verifiedTTL), keys: ks}
	if rc.NotBefore != nil {
		vt.notBefore = rc.NotBefore.Time
	}
	v.mu.Lock()
	if len(v.verified) >= maxVerified {
		clear(v.verified)
	}
	v.verified[key] = vt
	v.mu.Unlock()
	return c, nil
}

// trusted returns the claims of the token whose cache key is key, verified
// less than verifiedTTL ago with the key set ks, whose time claims still
// hold (with the leeway, as the parser checks them).
func (v *Verifier) trusted(key tokenKey, now time.Time, ks *keys) (Claims, bool) {
	v.mu.Lock()
	vt, ok := v.verified[key]
	v.mu.Unlock()
	if !ok || vt.keys != ks || !now.Before(vt.recheck) || !now.Before(vt.claims.ExpiresAt.Add(v.leeway)) ||
		(!vt.notBefore.IsZero() && now.Before(vt.notBefore.Add(-v.leeway))) {
		return Claims{}, false
	}
	return vt.claims, true
}

// key is the jwt.Keyfunc: it hands each algorithm only a key of its own kind.
// The parser has already refused algorithms outside Options.Algorithms.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	if alg == HS256 {
		if v.hsKey == nil {
			return nil, errors.New("HS256 is not configured")
		}
		return v.hsKey, nil
	}
	if v.jwks == nil {
		return nil, fmt.Errorf("%s is not configured", alg)
	}
	kid, _ := t.Header["kid"].(string)
	return v.jwks.lookup(alg, kid)
}

// Ready reports whether the Verifier can check every configured algorithm:
// an error while the JWKS has not been loaded yet.
func (v *Verifier) Ready() error {
	if v.jwks == nil {
		return nil
	}
	return v.jwks.ready()
}

// Close stops the key set refresh and waits for it to end. Verify keeps
// working with the keys already loaded. Close may be called more than once.
func (v *Verifier) Close() {
	if v.jwks != nil {
		v.jwks.close()
	}
}

// Sign returns an HS256 token for sub that expires ttl after now, with iat
// set to now. It is the development aid behind `routingservice token`.
func Sign(secret []byte, sub string, ttl time.Duration, now time.Time) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("auth: sign: empty secret")
	}
	if ttl <= 0 {
		return "", fmt.Errorf("auth: sign: ttl must be positive, got %v", ttl)
	}
	if err := envelope.ValidateURN(sub); err != nil {
		return "", fmt.Errorf("auth: sign: sub: %w", err)
	}
	claims := jwt.RegisteredClaims{
		Subject:   sub,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("auth: sign: %w", err)
	}
	return s, nil
}
