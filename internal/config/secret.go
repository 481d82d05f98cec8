package config

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// LoadLocalSecret gives local mode with HS256 and no JWT_SECRET its secret:
// <data_dir>/jwt_secret, made on first use from 32 random bytes (file mode
// 0600, refused when others may read it). The service and `routingservice
// token` resolve the data dir alike, so they share it. Elsewhere it does
// nothing.
func (c *Config) LoadLocalSecret() error {
	if c.JWTSecret != "" || c.RunMode != ModeLocal || !slices.Contains(c.Auth.Algorithms, "HS256") || c.DataDir == "" {
		return nil
	}
	secret, err := loadOrCreateSecret(filepath.Join(c.DataDir, LocalSecretFile))
	if err != nil {
		return &KeyError{Key: "data_dir", Msg: "local JWT secret", Err: err}
	}
	c.JWTSecret, c.LocalSecret = secret, true
	return nil
}

// ExistingLocalSecret returns the secret an earlier start generated into
// dataDir, without making one.
func ExistingLocalSecret(dataDir string) (string, error) {
	return readSecret(filepath.Join(dataDir, LocalSecretFile))
}

func loadOrCreateSecret(path string) (string, error) {
	if s, err := readSecret(path); err == nil || !errors.Is(err, os.ErrNotExist) {
		return s, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	// Written whole under a temporary name, then linked into place: a
	// concurrent first start either wins or reads the winner's secret.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".jwt_secret-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(hex.EncodeToString(b[:]) + "\n")
	if err := errors.Join(werr, tmp.Sync(), tmp.Close()); err != nil {
		return "", err
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return "", err
	}
	return readSecret(path)
}

func readSecret(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is readable by others (mode %v); chmod 600 it", path, st.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if len(s) < 32 {
		return "", fmt.Errorf("%s holds fewer than 32 characters", path)
	}
	return s, nil
}
