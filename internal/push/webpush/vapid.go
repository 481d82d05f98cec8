package webpush

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// VAPIDFile is the name of the file LoadOrCreateVAPID keeps in the data dir.
const VAPIDFile = "vapid.json"

// GenerateVAPIDKeys returns a new VAPID key pair (RFC 8292): pub is the
// base64url of the uncompressed P-256 point (what browsers pass to
// pushManager.subscribe as applicationServerKey), priv the base64url of the
// 32-byte private scalar.
func GenerateVAPIDKeys() (pub, priv string, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("vapid: generate key: %w", err)
	}
	return encodeKeys(k)
}

func encodeKeys(k *ecdsa.PrivateKey) (pub, priv string, err error) {
	d, err := k.Bytes()
	if err != nil {
		return "", "", fmt.Errorf("vapid: encode private key: %w", err)
	}
	p, err := k.PublicKey.Bytes()
	if err != nil {
		return "", "", fmt.Errorf("vapid: encode public key: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(p), base64.RawURLEncoding.EncodeToString(d), nil
}

// ParseVAPIDPrivateKey decodes a base64url private key (as made by
// GenerateVAPIDKeys) and returns it with its base64url public key.
func ParseVAPIDPrivateKey(priv string) (*ecdsa.PrivateKey, string, error) {
	d, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(strings.TrimSpace(priv), "="))
	if err != nil {
		return nil, "", fmt.Errorf("vapid: private key is not base64url: %w", err)
	}
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d)
	if err != nil {
		return nil, "", fmt.Errorf("vapid: private key: %w", err)
	}
	pub, _, err := encodeKeys(k)
	if err != nil {
		return nil, "", err
	}
	return k, pub, nil
}

type vapidFile struct {
	PublicKey  string `json:"public_key"`
	PrivateKey string `json:"private_key"`
}

// LoadOrCreateVAPID returns the VAPID key pair kept in dir/vapid.json,
// generating it (file mode 0600) on first use. Concurrent first uses by
// several processes agree on one pair: the file appears atomically and only
// once.
func LoadOrCreateVAPID(dir string) (pub, priv string, err error) {
	path := filepath.Join(dir, VAPIDFile)
	if pub, priv, err := readVAPID(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return pub, priv, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("vapid: data dir: %w", err)
	}
	pub, priv, err = GenerateVAPIDKeys()
	if err != nil {
		return "", "", err
	}
	b, err := json.Marshal(vapidFile{PublicKey: pub, PrivateKey: priv})
	if err != nil {
		return "", "", fmt.Errorf("vapid: encode: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".vapid-*.tmp")
	if err != nil {
		return "", "", fmt.Errorf("vapid: create: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return "", "", fmt.Errorf("vapid: chmod: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return "", "", fmt.Errorf("vapid: write: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", "", fmt.Errorf("vapid: sync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", "", fmt.Errorf("vapid: close: %w", err)
	}
	// Link fails if another process created the file first: use theirs.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readVAPID(path)
		}
		return "", "", fmt.Errorf("vapid: install %s: %w", path, err)
	}
	return pub, priv, nil
}

func readVAPID(path string) (pub, priv string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", fmt.Errorf("vapid: %w", err)
	}
	var f vapidFile
	if err := json.Unmarshal(b, &f); err != nil {
		return "", "", fmt.Errorf("vapid: %s: %w", path, err)
	}
	_, derived, err := ParseVAPIDPrivateKey(f.PrivateKey)
	if err != nil {
		return "", "", fmt.Errorf("vapid: %s: %w", path, err)
	}
	if derived != f.PublicKey {
		return "", "", fmt.Errorf("vapid: %s: public key does not match the private key", path)
	}
	return f.PublicKey, f.PrivateKey, nil
}
