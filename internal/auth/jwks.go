package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
)

// maxJWKSBytes bounds the key set document read from the network.
const maxJWKSBytes = 1 << 20

// minRSABits is the smallest RSA modulus accepted from the key set.
const minRSABits = 2048

// keySetTuning holds the timings of the key set refresher.
type keySetTuning struct {
	// fetchTimeout bounds one HTTP fetch.
	fetchTimeout time.Duration
	// unknownKIDInterval is the least time between two fetches caused by
	// tokens naming an unknown key id.
	unknownKIDInterval time.Duration
	// retryMin and retryMax bound the backoff after a failed fetch.
	retryMin, retryMax time.Duration
}

func defaultKeySetTuning() keySetTuning {
	return keySetTuning{
		fetchTimeout:       10 * time.Second,
		unknownKIDInterval: 30 * time.Second,
		retryMin:           time.Second,
		retryMax:           time.Minute,
	}
}

// publicKey is one usable key of the set.
type publicKey struct {
	alg string // the algorithm it verifies
	key any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// keys is one loaded key set, replaced whole on every successful fetch.
type keys struct {
	byKID map[string]publicKey
	all   []publicKey
}

// keySet is the JWKS cache and its refresher goroutine. Lookups read an
// atomic pointer and never block; the refresher owns every fetch.
type keySet struct {
	url     string
	client  *http.Client
	refresh time.Duration
	tune    keySetTuning
	log     *slog.Logger

	current atomic.Pointer[keys]
	kick    chan struct{} // unknown kid seen: fetch soon (buffered, 1)
	fetches atomic.Int64  // attempted fetches, for tests and metrics

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// startKeySet fetches the set once (bounded by ctx) and starts the refresher.
func startKeySet(ctx context.Context, url string, client *http.Client, refresh time.Duration, tune keySetTuning, log *slog.Logger) *keySet {
	s := &keySet{
		url: url, client: client, refresh: refresh, tune: tune, log: log,
		kick: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	err := s.fetch(ctx)
	if err != nil {
		log.Warn("jwks: first fetch failed; retrying in the background", "url", url, "error", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	go s.run(runCtx, err == nil)
	return s
}

func (s *keySet) close() {
	s.closeOnce.Do(func() {
		s.cancel()
		<-s.done
	})
}

func (s *keySet) ready() error {
	if s.current.Load() == nil {
		return fmt.Errorf("auth: jwks %s not loaded yet", s.url)
	}
	return nil
}

// run refreshes the set every refresh interval, retries failed fetches with
// backoff, and honours unknown-kid kicks at most once per unknownKIDInterval.
func (s *keySet) run(ctx context.Context, ok bool) {
	defer close(s.done)
	last := time.Now()
	backoff := s.tune.retryMin
	next := last.Add(s.refresh)
	if !ok {
		next = last.Add(backoff)
	}
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
			// Fetch no sooner than unknownKIDInterval after the last fetch.
			if soon := last.Add(s.tune.unknownKIDInterval); soon.Before(next) {
				next = soon
				timer.Reset(time.Until(next))
			}
			continue
		case <-timer.C:
		}
		last = time.Now()
		if err := s.fetch(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("jwks: fetch failed", "url", s.url, "error", err, "retry_in", backoff)
			next = last.Add(backoff)
			backoff = min(2*backoff, s.tune.retryMax, s.refresh)
		} else {
			backoff = s.tune.retryMin
			next = last.Add(s.refresh)
		}
		timer.Reset(time.Until(next))
	}
}

// requestFetch asks the refresher for an early fetch without blocking.
func (s *keySet) requestFetch() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// lookup returns the key for a token signed with alg naming kid. A token
// without kid is accepted when exactly one key of the set verifies alg.
func (s *keySet) lookup(alg, kid string) (any, error) {
	ks := s.current.Load()
	if ks == nil {
		s.requestFetch()
		return nil, errors.New("jwks not loaded yet")
	}
	if kid == "" {
		var found any
		n := 0
		for _, k := range ks.all {
			if k.alg == alg {
				found, n = k.key, n+1
			}
		}
		if n != 1 {
			return nil, fmt.Errorf("token has no kid and the key set has %d %s keys", n, alg)
		}
		return found, nil
	}
	k, ok := ks.byKID[kid]
	if !ok {
		s.requestFetch()
		return nil, fmt.Errorf("unknown kid %q", kid)
	}
	if k.alg != alg {
		return nil, fmt.Errorf("kid %q is a %s key, token is %s", kid, k.alg, alg)
	}
	return k.key, nil
}

// fetch loads the set from the URL and replaces the current one. On error
// the current set is kept.
func (s *keySet) fetch(ctx context.Context) error {
	s.fetches.Add(1)
	ctx, cancel := context.WithTimeout(ctx, s.tune.fetchTimeout)
	defer cancel()
	ks, skipped, err := loadKeys(ctx, s.client, s.url)
	if err != nil {
		return err
	}
	for _, sk := range skipped {
		s.log.Debug("jwks: key skipped", "url", s.url, "index", sk.index, "kid", sk.kid, "reason", sk.reason)
	}
	s.current.Store(ks)
	return nil
}

// skippedKey is a key of the set that cannot verify tokens.
type skippedKey struct {
	index  int
	kid    string
	reason error
}

// loadKeys fetches the set at url and parses its usable keys; the others
// are returned as skipped.
func loadKeys(ctx context.Context, client *http.Client, url string) (*keys, []skippedKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("jwks request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("jwks get: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxJWKSBytes))
		return nil, nil, fmt.Errorf("jwks get: status %d", resp.StatusCode)
	}
	var doc jwkset.JWKSMarshal
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJWKSBytes)).Decode(&doc); err != nil {
		return nil, nil, fmt.Errorf("jwks decode: %w", err)
	}
	ks := &keys{byKID: make(map[string]publicKey, len(doc.Keys))}
	var skipped []skippedKey
	for i, m := range doc.Keys {
		k, err := parseKey(m)
		if err != nil {
			// One odd key (another use, an unsupported type) must not
			// hide the others.
			skipped = append(skipped, skippedKey{index: i, kid: m.KID, reason: err})
			continue
		}
		ks.all = append(ks.all, k)
		if m.KID != "" {
			ks.byKID[m.KID] = k
		}
	}
	return ks, skipped, nil
}

// KeySet is what FetchKeySet found in a key set.
type KeySet struct {
	// Keys counts the usable keys by the algorithm they verify.
	Keys map[string]int
	// Skipped describes each key that cannot verify tokens, and why.
	Skipped []string
}

// Usable is the number of usable keys.
func (k KeySet) Usable() int {
	n := 0
	for _, c := range k.Keys {
		n += c
	}
	return n
}

// FetchKeySet fetches and parses the key set at o.JWKSURL once, as a
// Verifier of o does (same HTTP client, no redirect followed, same size
// limit and key rules), bounded by ctx. It starts nothing.
func FetchKeySet(ctx context.Context, o Options) (KeySet, error) {
	if o.JWKSURL == "" {
		return KeySet{}, errors.New("auth: no JWKS URL")
	}
	ks, skipped, err := loadKeys(ctx, jwksClient(o.HTTPClient), o.JWKSURL)
	if err != nil {
		return KeySet{}, fmt.Errorf("auth: %w", err)
	}
	out := KeySet{Keys: map[string]int{}}
	for _, k := range ks.all {
		out.Keys[k.alg]++
	}
	for _, sk := range skipped {
		d := fmt.Sprintf("key %d", sk.index)
		if sk.kid != "" {
			d += fmt.Sprintf(" (kid %q)", sk.kid)
		}
		out.Skipped = append(out.Skipped, d+": "+sk.reason.Error())
	}
	return out, nil
}

// jwksClient is a copy of c (a zero client when nil) that follows no
// redirect: the key set is fetched from the configured URL only, never
// from an internal address or keys an attacker controls.
func jwksClient(c *http.Client) *http.Client {
	var client http.Client
	if c != nil {
		client = *c
	}
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &client
}

// parseKey turns one JWK into a verification key. It reads public material
// only, refuses keys meant for encryption, and infers the algorithm from
// the key type when the JWK does not name it.
func parseKey(m jwkset.JWKMarshal) (publicKey, error) {
	if m.USE != "" && m.USE != jwkset.UseSig {
		return publicKey{}, fmt.Errorf("use %q", m.USE)
	}
	jwk, err := jwkset.NewJWKFromMarshal(m, jwkset.JWKMarshalOptions{}, jwkset.JWKValidateOptions{})
	if err != nil {
		return publicKey{}, err
	}
	var alg string
	switch k := jwk.Key().(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return publicKey{}, fmt.Errorf("RSA key of %d bits", k.N.BitLen())
		}
		alg = RS256
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return publicKey{}, fmt.Errorf("EC curve %s", k.Curve.Params().Name)
		}
		alg = ES256
	case ed25519.PublicKey:
		alg = EdDSA
	default:
		return publicKey{}, fmt.Errorf("key type %T", k)
	}
	if m.ALG != "" && m.ALG.String() != alg {
		return publicKey{}, fmt.Errorf("alg %q does not fit a %s key", m.ALG, alg)
	}
	return publicKey{alg: alg, key: jwk.Key()}, nil
}
