package push

import (
	"crypto/ecdh"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/go-routing-service/routingservice/internal/store"
)

// ErrInvalidTarget is wrapped by every error of Validate. The message that
// wraps it says what to fix and is fit for a 400 response.
var ErrInvalidTarget = errors.New("invalid push target")

// Limits on the targets Validate accepts.
const (
	MaxFCMTokenLen    = 4096
	MinAPNsTokenLen   = 64
	MaxAPNsTokenLen   = 200
	MaxWebPushURLLen  = 2048
	p256UncompressedN = 65
	webPushAuthN      = 16
)

// ValidateOptions tunes Validate.
type ValidateOptions struct {
	// AllowInsecureLocalEndpoints accepts http:// Web Push endpoints (and
	// loopback addresses) whose host is localhost, 127.0.0.1 or ::1. For
	// local development and tests against local push services only.
	AllowInsecureLocalEndpoints bool
}

// Validate checks t with the default (strict) options.
func Validate(t store.Target) error { return ValidateOptions{}.Validate(t) }

// Validate checks one target of PUT/DELETE /v1/devices:
//   - android, ios: an FCM registration token, 1-4096 characters of
//     [A-Za-z0-9_:.-], and no Web Push keys;
//   - apns: an APNs device token of 64-200 hexadecimal digits;
//   - webpush: an https endpoint URL (no user info, no loopback, private or
//     link-local address literal), p256dh the base64url of an uncompressed
//     P-256 point (65 bytes) and auth the base64url of 16 bytes.
func (o ValidateOptions) Validate(t store.Target) error {
	switch t.Platform {
	case "android", "ios":
		if err := noKeys(t); err != nil {
			return err
		}
		return validateFCMToken(t.Token)
	case "apns":
		if err := noKeys(t); err != nil {
			return err
		}
		return validateAPNsToken(t.Token)
	case "webpush":
		if err := o.validateEndpoint(t.Token); err != nil {
			return err
		}
		if err := validateP256DH(t.P256DH); err != nil {
			return err
		}
		return validateAuth(t.Auth)
	case "":
		return fmt.Errorf("%w: platform is required (android, ios, apns or webpush)", ErrInvalidTarget)
	default:
		return fmt.Errorf("%w: unknown platform %q (android, ios, apns or webpush)", ErrInvalidTarget, short(t.Platform))
	}
}

func noKeys(t store.Target) error {
	if t.P256DH != "" || t.Auth != "" {
		return fmt.Errorf("%w: subscription keys are only for platform webpush", ErrInvalidTarget)
	}
	return nil
}

func validateFCMToken(tok string) error {
	if tok == "" {
		return fmt.Errorf("%w: token is required", ErrInvalidTarget)
	}
	if len(tok) > MaxFCMTokenLen {
		return fmt.Errorf("%w: token is longer than %d characters", ErrInvalidTarget, MaxFCMTokenLen)
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == ':' || c == '.') {
			return fmt.Errorf("%w: token may contain only [A-Za-z0-9_:.-]", ErrInvalidTarget)
		}
	}
	return nil
}

func validateAPNsToken(tok string) error {
	if tok == "" {
		return fmt.Errorf("%w: token is required", ErrInvalidTarget)
	}
	if len(tok) < MinAPNsTokenLen || len(tok) > MaxAPNsTokenLen {
		return fmt.Errorf("%w: apns token must be %d-%d hexadecimal digits, got %d characters", ErrInvalidTarget, MinAPNsTokenLen, MaxAPNsTokenLen, len(tok))
	}
	if _, err := hex.DecodeString(tok); err != nil {
		return fmt.Errorf("%w: apns token must be hexadecimal digits (an even number of them)", ErrInvalidTarget)
	}
	return nil
}

func (o ValidateOptions) validateEndpoint(s string) error {
	if s == "" {
		return fmt.Errorf("%w: subscription.endpoint is required", ErrInvalidTarget)
	}
	if len(s) > MaxWebPushURLLen {
		return fmt.Errorf("%w: subscription.endpoint is longer than %d characters", ErrInvalidTarget, MaxWebPushURLLen)
	}
	u, err := url.Parse(s)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%w: subscription.endpoint must be an absolute https URL", ErrInvalidTarget)
	}
	if u.User != nil {
		return fmt.Errorf("%w: subscription.endpoint must not contain user information", ErrInvalidTarget)
	}
	if u.Fragment != "" {
		return fmt.Errorf("%w: subscription.endpoint must not contain a fragment", ErrInvalidTarget)
	}
	host := u.Hostname()
	local := isLocalHost(host)
	switch u.Scheme {
	case "https":
	case "http":
		if !(o.AllowInsecureLocalEndpoints && local) {
			return fmt.Errorf("%w: subscription.endpoint must use https", ErrInvalidTarget)
		}
	default:
		return fmt.Errorf("%w: subscription.endpoint must use https, not %q", ErrInvalidTarget, short(u.Scheme))
	}
	if local && !o.AllowInsecureLocalEndpoints {
		return fmt.Errorf("%w: subscription.endpoint must not be a local address", ErrInvalidTarget)
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsLoopback() &&
		(ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() || ip.IsMulticast() || ip.IsLinkLocalMulticast()) {
		return fmt.Errorf("%w: subscription.endpoint must not be a private or link-local address", ErrInvalidTarget)
	}
	return nil
}

func isLocalHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func validateP256DH(s string) error {
	if s == "" {
		return fmt.Errorf("%w: subscription.keys.p256dh is required", ErrInvalidTarget)
	}
	b, err := decodeBase64URL(s)
	if err != nil {
		return fmt.Errorf("%w: subscription.keys.p256dh is not base64url", ErrInvalidTarget)
	}
	if len(b) != p256UncompressedN || b[0] != 4 {
		return fmt.Errorf("%w: subscription.keys.p256dh must be an uncompressed P-256 point (65 bytes), got %d bytes", ErrInvalidTarget, len(b))
	}
	if _, err := ecdh.P256().NewPublicKey(b); err != nil {
		return fmt.Errorf("%w: subscription.keys.p256dh is not a point on P-256", ErrInvalidTarget)
	}
	return nil
}

func validateAuth(s string) error {
	if s == "" {
		return fmt.Errorf("%w: subscription.keys.auth is required", ErrInvalidTarget)
	}
	b, err := decodeBase64URL(s)
	if err != nil {
		return fmt.Errorf("%w: subscription.keys.auth is not base64url", ErrInvalidTarget)
	}
	if len(b) != webPushAuthN {
		return fmt.Errorf("%w: subscription.keys.auth must be 16 bytes, got %d", ErrInvalidTarget, len(b))
	}
	return nil
}

// decodeBase64URL accepts base64url with or without padding (browsers send
// it without; some libraries pad).
func decodeBase64URL(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

func short(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
