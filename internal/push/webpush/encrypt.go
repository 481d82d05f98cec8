package webpush

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// recordSize is the aes128gcm record size announced in the header; a push
// body is one record.
const recordSize = 4096

// Encrypt encrypts plaintext for a subscription as RFC 8291 describes
// (aes128gcm content coding, RFC 8188, one record): uaPublic is the
// subscription's p256dh key (65 bytes), authSecret its auth secret (16
// bytes). A fresh ephemeral key and salt are used for every call.
func Encrypt(plaintext, uaPublic, authSecret []byte) ([]byte, error) {
	as, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("webpush: ephemeral key: %w", err)
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("webpush: salt: %w", err)
	}
	return encrypt(plaintext, uaPublic, authSecret, as, salt)
}

func encrypt(plaintext, uaPublic, authSecret []byte, as *ecdh.PrivateKey, salt []byte) ([]byte, error) {
	if len(plaintext)+1+16 > recordSize {
		return nil, errors.New("webpush: payload too large for one record")
	}
	cek, nonce, err := deriveKeys(as, uaPublic, as.PublicKey().Bytes(), authSecret, salt)
	if err != nil {
		return nil, err
	}
	gcm, err := newGCM(cek)
	if err != nil {
		return nil, err
	}
	asPublic := as.PublicKey().Bytes()
	out := make([]byte, 0, 16+4+1+len(asPublic)+len(plaintext)+1+gcm.Overhead())
	out = append(out, salt...)
	out = binary.BigEndian.AppendUint32(out, recordSize)
	out = append(out, byte(len(asPublic)))
	out = append(out, asPublic...)
	record := make([]byte, 0, len(plaintext)+1)
	record = append(record, plaintext...)
	record = append(record, 0x02) // delimiter of the last record, no padding
	return gcm.Seal(out, nonce, record, nil), nil
}

// Decrypt reverses Encrypt with the subscription's private key and auth
// secret. It is what a browser does; the local push service stand-in uses it.
func Decrypt(body []byte, ua *ecdh.PrivateKey, authSecret []byte) ([]byte, error) {
	if len(body) < 21 {
		return nil, errors.New("webpush: body shorter than the aes128gcm header")
	}
	salt := body[:16]
	rs := binary.BigEndian.Uint32(body[16:20])
	idlen := int(body[20])
	if len(body) < 21+idlen {
		return nil, errors.New("webpush: truncated key id")
	}
	asPublic := body[21 : 21+idlen]
	ct := body[21+idlen:]
	if rs < 18 || uint32(len(ct)) > rs {
		return nil, fmt.Errorf("webpush: record size %d does not hold a %d byte record", rs, len(ct))
	}
	asKey, err := ecdh.P256().NewPublicKey(asPublic)
	if err != nil {
		return nil, fmt.Errorf("webpush: sender key: %w", err)
	}
	shared, err := ua.ECDH(asKey)
	if err != nil {
		return nil, fmt.Errorf("webpush: ecdh: %w", err)
	}
	cek, nonce, err := schedule(shared, ua.PublicKey().Bytes(), asPublic, authSecret, salt)
	if err != nil {
		return nil, err
	}
	gcm, err := newGCM(cek)
	if err != nil {
		return nil, err
	}
	pt, err := gcm.Open(nil, nonce, ct, nil)
	if err != nil {
		return nil, fmt.Errorf("webpush: decrypt: %w", err)
	}
	// Strip padding: zeros after the delimiter 0x02 (last record).
	i := len(pt) - 1
	for i >= 0 && pt[i] == 0 {
		i--
	}
	if i < 0 || pt[i] != 0x02 {
		return nil, errors.New("webpush: missing last-record delimiter")
	}
	return pt[:i], nil
}

func deriveKeys(as *ecdh.PrivateKey, uaPublic, asPublic, authSecret, salt []byte) (cek, nonce []byte, err error) {
	ua, err := ecdh.P256().NewPublicKey(uaPublic)
	if err != nil {
		return nil, nil, fmt.Errorf("webpush: p256dh: %w", err)
	}
	if len(authSecret) != 16 {
		return nil, nil, fmt.Errorf("webpush: auth secret is %d bytes, want 16", len(authSecret))
	}
	shared, err := as.ECDH(ua)
	if err != nil {
		return nil, nil, fmt.Errorf("webpush: ecdh: %w", err)
	}
	return schedule(shared, uaPublic, asPublic, authSecret, salt)
}

// schedule is the RFC 8291 section 3.4 key schedule.
func schedule(shared, uaPublic, asPublic, authSecret, salt []byte) (cek, nonce []byte, err error) {
	keyInfo := make([]byte, 0, 14+len(uaPublic)+len(asPublic))
	keyInfo = append(keyInfo, "WebPush: info\x00"...)
	keyInfo = append(keyInfo, uaPublic...)
	keyInfo = append(keyInfo, asPublic...)
	ikm, err := hkdf.Key(sha256.New, shared, authSecret, string(keyInfo), 32)
	if err != nil {
		return nil, nil, fmt.Errorf("webpush: ikm: %w", err)
	}
	prk, err := hkdf.Extract(sha256.New, ikm, salt)
	if err != nil {
		return nil, nil, fmt.Errorf("webpush: prk: %w", err)
	}
	if cek, err = hkdf.Expand(sha256.New, prk, "Content-Encoding: aes128gcm\x00", 16); err != nil {
		return nil, nil, fmt.Errorf("webpush: cek: %w", err)
	}
	if nonce, err = hkdf.Expand(sha256.New, prk, "Content-Encoding: nonce\x00", 12); err != nil {
		return nil, nil, fmt.Errorf("webpush: nonce: %w", err)
	}
	return cek, nonce, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("webpush: aes: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("webpush: gcm: %w", err)
	}
	return gcm, nil
}
