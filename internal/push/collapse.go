package push

import (
	"crypto/sha256"
	"encoding/base64"
)

// CollapseKey returns the key under which a provider may collapse pending
// pushes to one recipient: 32 characters of base64url, derived from the
// recipient's URN by SHA-256 so that the URN itself is not sent to the
// provider. It fits every provider's limit (FCM collapse_key, APNs
// apns-collapse-id at most 64 bytes, Web Push Topic at most 32 characters).
func CollapseKey(recipient string) string {
	sum := sha256.Sum256([]byte(recipient))
	return base64.RawURLEncoding.EncodeToString(sum[:24])
}
