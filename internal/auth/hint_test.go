package auth

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/go-routing-service/routingservice/internal/testkit"
)

// A token refused only because another HS256 secret signed it is logged
// at info with the hint, at most once per period; tokens refused for
// other reasons (expired, malformed, a bad subject) are not.
func TestOtherSecretHint(t *testing.T) {
	var buf testkit.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	v := newTestVerifier(t, Options{Config: Config{Algorithms: []string{HS256}}, HS256Secret: testSecret, Logger: log}, fastTuning())
	now := time.Unix(1_700_000_000, 0)
	v.now = func() time.Time { return now }
	claims := jwt.MapClaims{"sub": testSub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	other := []byte("another-secret-0123456789abcdef-0123")

	count := func() int { return strings.Count(buf.String(), OtherSecretMsg) }

	// Refused for other reasons: no hint.
	for name, tok := range map[string]string{
		"expired, other secret":  signHS(t, other, "", with(claims, "exp", now.Add(-time.Hour).Unix())),
		"bad sub, other secret":  signHS(t, other, "", with(claims, "sub", "bob")),
		"malformed":              "not.a.token",
		"expired, right secret":  signHS(t, testSecret, "", with(claims, "exp", now.Add(-time.Hour).Unix())),
		"signature cut":          strings.TrimRight(signHS(t, testSecret, "", claims), "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") + "x",
		"no exp, other secret":   signHS(t, other, "", with(claims, "exp", nil)),
		"right secret, accepted": signHS(t, testSecret, "", claims),
	} {
		_, err := v.Verify(tok)
		if name == "right secret, accepted" {
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		} else if err == nil {
			t.Fatalf("%s: accepted", name)
		}
		if n := count(); n != 0 {
			t.Fatalf("%s: hint logged:\n%s", name, buf.String())
		}
	}

	// Signed with another secret: refused, and the hint is logged once.
	tok := signHS(t, other, "", claims)
	for range 5 {
		if _, err := v.Verify(tok); err == nil {
			t.Fatal("a token signed with another secret was accepted")
		}
	}
	out := buf.String()
	if n := count(); n != 1 {
		t.Fatalf("hint logged %d times in one period, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "level=INFO") || !strings.Contains(out, "JWT_SECRET") || !strings.Contains(out, "data dir") {
		t.Fatalf("hint line lacks its level or its advice:\n%s", out)
	}
	if strings.Contains(out, testSub) || strings.Contains(out, tok) {
		t.Fatalf("hint line names the subject or the token:\n%s", out)
	}

	// A period later: logged again, with the count held back meanwhile.
	now = now.Add(otherSecretEvery)
	if _, err := v.Verify(tok); err == nil {
		t.Fatal("accepted")
	}
	if n := count(); n != 2 {
		t.Fatalf("hint logged %d times after a period, want 2:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "held_back=4") {
		t.Fatalf("second hint does not count the 4 held back:\n%s", buf.String())
	}
}
