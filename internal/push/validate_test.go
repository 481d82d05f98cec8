package push_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/store"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	const (
		p256dh = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
		auth   = "BTBZMqHH6r4Tts7J_aSIgg"
		hex64  = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	)
	wp := func(endpoint, key, a string) store.Target {
		return store.Target{Platform: "webpush", Token: endpoint, P256DH: key, Auth: a}
	}
	cases := []struct {
		name  string
		t     store.Target
		local bool   // AllowInsecureLocalEndpoints
		want  string // "" valid, else a fragment of the message
	}{
		{"android", store.Target{Platform: "android", Token: "fcm-Token_1:APA91b.x"}, false, ""},
		{"ios", store.Target{Platform: "ios", Token: "abc"}, false, ""},
		{"fcm empty", store.Target{Platform: "android"}, false, "token is required"},
		{"fcm charset", store.Target{Platform: "android", Token: "a b"}, false, "may contain only"},
		{"fcm too long", store.Target{Platform: "ios", Token: strings.Repeat("a", 4097)}, false, "longer than"},
		{"fcm with keys", store.Target{Platform: "android", Token: "a", Auth: auth}, false, "only for platform webpush"},
		{"apns", store.Target{Platform: "apns", Token: hex64}, false, ""},
		{"apns upper hex", store.Target{Platform: "apns", Token: strings.ToUpper(hex64)}, false, ""},
		{"apns short", store.Target{Platform: "apns", Token: hex64[:62]}, false, "64-200"},
		{"apns long", store.Target{Platform: "apns", Token: strings.Repeat("ab", 101)}, false, "64-200"},
		{"apns not hex", store.Target{Platform: "apns", Token: "zz" + hex64[2:]}, false, "hexadecimal"},
		{"apns odd", store.Target{Platform: "apns", Token: hex64 + "a"}, false, "hexadecimal"},
		{"webpush", wp("https://fcm.googleapis.com/fcm/send/abc", p256dh, auth), false, ""},
		{"webpush padded keys", wp("https://push.example/x", p256dh+"=", auth+"=="), false, ""},
		{"webpush http", wp("http://push.example/x", p256dh, auth), false, "must use https"},
		{"webpush http local refused", wp("http://127.0.0.1:8080/x", p256dh, auth), false, "must use https"},
		{"webpush http local allowed", wp("http://127.0.0.1:8080/x", p256dh, auth), true, ""},
		{"webpush http localhost allowed", wp("http://localhost/x", p256dh, auth), true, ""},
		{"webpush https local refused", wp("https://localhost/x", p256dh, auth), false, "local address"},
		{"webpush http remote with option", wp("http://push.example/x", p256dh, auth), true, "must use https"},
		{"webpush private ip", wp("https://10.0.0.8/x", p256dh, auth), false, "private"},
		{"webpush relative", wp("/push/x", p256dh, auth), false, "absolute https URL"},
		{"webpush scheme", wp("ftp://push.example/x", p256dh, auth), false, "must use https"},
		{"webpush userinfo", wp("https://u:p@push.example/x", p256dh, auth), false, "user information"},
		{"webpush no endpoint", wp("", p256dh, auth), false, "endpoint is required"},
		{"p256dh missing", wp("https://push.example/x", "", auth), false, "p256dh is required"},
		{"p256dh not base64url", wp("https://push.example/x", "B+/"+p256dh[3:], auth), false, "not base64url"},
		{"p256dh compressed", wp("https://push.example/x", "AsVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcx", auth), false, "65 bytes"},
		{"p256dh off curve", wp("https://push.example/x", "BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE", auth), false, "not a point"},
		{"auth length", wp("https://push.example/x", p256dh, "BTBZMqHH6r4Tts7J"), false, "16 bytes"},
		{"auth missing", wp("https://push.example/x", p256dh, ""), false, "auth is required"},
		{"no platform", store.Target{Token: "x"}, false, "platform is required"},
		{"unknown platform", store.Target{Platform: "pager", Token: "x"}, false, "unknown platform"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := push.ValidateOptions{AllowInsecureLocalEndpoints: tc.local}.Validate(tc.t)
			if !tc.local && fmt.Sprint(push.Validate(tc.t)) != fmt.Sprint(err) {
				t.Errorf("Validate and the zero ValidateOptions disagree")
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("accepted, want an error about %q", tc.want)
			case tc.want != "" && (!errors.Is(err, push.ErrInvalidTarget) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %q, want ErrInvalidTarget about %q", err, tc.want)
			}
		})
	}
}
