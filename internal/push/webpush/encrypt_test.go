package webpush

import (
	"crypto/ecdh"
	"encoding/base64"
	"testing"
)

// TestEncryptRFC8291 checks the encryption against the worked example of
// RFC 8291 appendix A, byte for byte, and that Decrypt reverses it.
func TestEncryptRFC8291(t *testing.T) {
	b := func(s string) []byte {
		t.Helper()
		v, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	const plaintext = "When I grow up, I want to be a watermelon"
	as, err := ecdh.P256().NewPrivateKey(b("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"))
	if err != nil {
		t.Fatal(err)
	}
	ua, err := ecdh.P256().NewPrivateKey(b("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"))
	if err != nil {
		t.Fatal(err)
	}
	uaPublic := b("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4")
	auth := b("BTBZMqHH6r4Tts7J_aSIgg")
	got, err := encrypt([]byte(plaintext), uaPublic, auth, as, b("DGv6ra1nlYgDCS1FRnbzlw"))
	if err != nil {
		t.Fatal(err)
	}
	const want = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
	if s := base64.RawURLEncoding.EncodeToString(got); s != want {
		t.Fatalf("ciphertext\n got %s\nwant %s", s, want)
	}
	pt, err := Decrypt(got, ua, auth)
	if err != nil {
		t.Fatal(err)
	}
	if string(pt) != plaintext {
		t.Fatalf("decrypted %q", pt)
	}
	// A fresh encryption decrypts too, and a wrong auth secret does not.
	body, err := Encrypt([]byte("x"), uaPublic, auth)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := Decrypt(body, ua, auth); err != nil || string(pt) != "x" {
		t.Fatalf("round trip: %q, %v", pt, err)
	}
	bad := append([]byte(nil), auth...)
	bad[0] ^= 1
	if _, err := Decrypt(body, ua, bad); err == nil {
		t.Fatal("decrypt with a wrong auth secret succeeded")
	}
}
