package app

import (
	"errors"
	"fmt"

	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/internal/push/apns"
	"github.com/go-routing-service/routingservice/internal/push/fcm"
)

// Preflight checks what config.Check cannot see in the configuration alone:
// that every file it names exists and holds what the key expects (the
// VAPID private key, FCM credentials, the APNs key, the push CA bundle,
// and the files the chosen engines name: the NATS and Pub/Sub
// credentials). It reads those files and nothing else: it creates,
// migrates and connects to nothing. It reports every problem at
// once, as a config.Errors: each problem a *config.KeyError naming its key.
//
// `serve` runs it before it opens anything, and `config check` runs it
// too, so a configuration that the check accepts is not refused by serve
// for a file.
func Preflight(cfg config.Config) error {
	var errs config.Errors
	bad := func(key string, err error) {
		errs = append(errs, &config.KeyError{Key: key, Err: err})
	}
	// named adds an error that names its key already.
	named := func(key string, err error) {
		var ke *config.KeyError
		if !errors.As(err, &ke) {
			ke = &config.KeyError{Key: key, Err: err}
		}
		errs = append(errs, ke)
	}
	pc := cfg.Push
	if pc.CAFile != "" {
		if _, err := pushRoots(pc.CAFile); err != nil {
			named("push.ca_file", err)
		}
	}
	if pc.WebPush.Enabled && pc.WebPush.VAPIDPrivateKeyFile != "" {
		if _, _, err := vapidKeys(cfg); err != nil {
			var ke *config.KeyError
			if errors.As(err, &ke) && ke.Key == "push.webpush.vapid_private_key_file" {
				err = &config.KeyError{Key: ke.Key, Msg: ke.Msg, Err: fmt.Errorf("%w\n  (the file holds the private key that `routingservice vapid` prints as private_key: "+
					"43 characters of unpadded base64url, a raw P-256 private key, on one line)", ke.Err)}
			}
			named("push.webpush.vapid_private_key_file", err)
		}
	}
	if pc.FCM.Enabled {
		// Reads and parses the service-account key; no network.
		if _, err := fcm.New(fcm.Config{FCM: pc.FCM}); err != nil {
			bad("push.fcm.credentials_file", err)
		}
	}
	if pc.APNs.Enabled {
		if _, err := apns.New(apns.Config{APNs: pc.APNs}); err != nil {
			bad("push.apns.key_file", err)
		}
	}
	// Each chosen engine checks the files its keys name.
	if e := cfg.Bus.Engine(); e != nil {
		e.Preflight(func(key string, err error) { bad("bus."+key, err) })
	}
	if e := cfg.StoreEngine(); e != nil {
		e.Preflight(func(key string, err error) { bad("store."+key, err) })
	}
	if e := cfg.PresenceEngine(); e != nil {
		e.Preflight(func(key string, err error) { bad("presence."+key, err) })
	}
	return errs.Err()
}
