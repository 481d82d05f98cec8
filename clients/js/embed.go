// Package jsclient embeds the JavaScript client so that the service can
// serve it to its browser demo. The client itself is src/index.js.
package jsclient

import "embed"

// FS holds src/index.js.
//
//go:embed src/index.js
var FS embed.FS
