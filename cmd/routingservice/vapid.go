package main

import (
	"fmt"
	"io"

	"github.com/go-routing-service/routingservice/internal/push/webpush"
)

// vapid prints a new VAPID key pair for Web Push (base64url): the public key
// for browsers and config (push.webpush.vapid_public_key), the private key
// for the file named by push.webpush.vapid_private_key_file.
func vapid(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("vapid", "vapid", stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	pub, priv, err := webpush.GenerateVAPIDKeys()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "public_key: %s\nprivate_key: %s\n", pub, priv)
	return nil
}
