// Package client is a Go client of the routing service's v1 API: sending,
// fetching and acknowledging messages over HTTP, and receiving them live over
// a WebSocket.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Envelope is one message as the service delivers it.
type Envelope struct {
	ID        string    `json:"id"`
	Sender    string    `json:"sender"`
	Recipient string    `json:"recipient"`
	Type      string    `json:"type,omitempty"`
	Payload   []byte    `json:"payload"`
	Ephemeral bool      `json:"ephemeral"`
	CreatedAt time.Time `json:"created_at"`
}

// Message is what Send sends.
type Message struct {
	Recipient      string `json:"recipient"`
	Payload        []byte `json:"payload"`
	Type           string `json:"type,omitempty"`
	Ephemeral      bool   `json:"ephemeral,omitempty"`
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

// Accepted is the answer to a send.
type Accepted struct {
	ID        string    `json:"id"`
	CreatedAt time.Time `json:"created_at"`
}

// Page is one page of pending messages.
type Page struct {
	Messages   []Envelope `json:"messages"`
	NextCursor string     `json:"next_cursor"`
}

// Device is a push target: Token for android, ios and apns; Subscription for webpush.
type Device struct {
	Platform     string        `json:"platform"`
	Token        string        `json:"token,omitempty"`
	Subscription *Subscription `json:"subscription,omitempty"`
}

// Subscription is a browser's Web Push subscription.
type Subscription struct {
	Endpoint string `json:"endpoint"`
	Keys     struct {
		P256DH string `json:"p256dh"`
		Auth   string `json:"auth"`
	} `json:"keys"`
}

// Error is an error answer of the service.
type Error struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	return fmt.Sprintf("routing service: %d %s: %s", e.Status, e.Code, e.Message)
}

// Client talks to one service.
type Client struct {
	// APIURL is the HTTP API's base URL, e.g. http://127.0.0.1:8082.
	APIURL string
	// WSURL is the WebSocket server's base URL, e.g. ws://127.0.0.1:8085.
	WSURL string
	// Token is the caller's JWT. Set it before the first call; afterwards
	// the client replaces it with the tokens RenewToken returns.
	Token string
	// RenewToken, when set, returns a fresh token. The client calls it when
	// the service answers 401 (the request is then sent once more with the
	// new token) and when a subscription's session ends with "token expired".
	RenewToken func(ctx context.Context) (string, error)
	// HTTP is the HTTP client (http.DefaultClient when nil).
	HTTP *http.Client

	mu      sync.Mutex
	renewed string // the latest token RenewToken returned; "" until then
}

// token returns the current token.
func (c *Client) token() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.renewed != "" {
		return c.renewed
	}
	return c.Token
}

// renew asks RenewToken for a fresh token. It reports false when there is
// no RenewToken.
func (c *Client) renew(ctx context.Context) (bool, error) {
	if c.RenewToken == nil {
		return false, nil
	}
	tok, err := c.RenewToken(ctx)
	if err != nil {
		return true, fmt.Errorf("routing service: renew token: %w", err)
	}
	if tok == "" {
		return true, errors.New("routing service: renew token: empty token")
	}
	c.mu.Lock()
	c.renewed = tok
	c.mu.Unlock()
	return true, nil
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = b
	}
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusUnauthorized && c.RenewToken != nil {
		// A refused token means nothing was done: renew it and try once more.
		resp.Body.Close()
		if _, err := c.renew(ctx); err != nil {
			return err
		}
		if resp, err = c.send(ctx, method, path, body); err != nil {
			return err
		}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("routing service: decode answer: %w", err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.APIURL, "/")+path, r)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.token())
	return c.http().Do(req)
}

func decodeError(resp *http.Response) error {
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_ = json.Unmarshal(b, &body)
	e := &Error{Status: resp.StatusCode, Code: body.Error.Code, Message: body.Error.Message}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.RetryAfter = time.Duration(s) * time.Second
	}
	return e
}

// Send sends m; the sender is the token's subject.
func (c *Client) Send(ctx context.Context, m Message) (Accepted, error) {
	var a Accepted
	err := c.do(ctx, http.MethodPost, "/v1/messages", m, &a)
	return a, err
}

// Fetch returns up to limit pending messages after cursor ("" for the first page).
func (c *Client) Fetch(ctx context.Context, after string, limit int) (Page, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if after != "" {
		q.Set("after", after)
	}
	var p Page
	path := "/v1/messages"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	err := c.do(ctx, http.MethodGet, path, nil, &p)
	return p, err
}

// Ack acknowledges messages: they are removed from the caller's queue.
func (c *Client) Ack(ctx context.Context, ids ...string) error {
	return c.do(ctx, http.MethodPost, "/v1/messages/ack", map[string][]string{"ids": ids}, nil)
}

// PutDevice registers a push target.
func (c *Client) PutDevice(ctx context.Context, d Device) error {
	return c.do(ctx, http.MethodPut, "/v1/devices", d, nil)
}

// DeleteDevice unregisters a push target.
func (c *Client) DeleteDevice(ctx context.Context, d Device) error {
	return c.do(ctx, http.MethodDelete, "/v1/devices", d, nil)
}

// Conn is a live WebSocket connection.
type Conn struct {
	ws *websocket.Conn
}

// ErrorFrame is an error the server sent over the WebSocket.
type ErrorFrame struct {
	Code    string
	Message string
}

func (e *ErrorFrame) Error() string { return "routing service: " + e.Code + ": " + e.Message }

// Connect opens a WebSocket. The server sends the backlog first, then live messages.
func (c *Client) Connect(ctx context.Context) (*Conn, error) {
	h := http.Header{}
	h.Set("Authorization", "Bearer "+c.token())
	ws, resp, err := websocket.Dial(ctx, strings.TrimSuffix(c.WSURL, "/")+"/v1/connect", &websocket.DialOptions{
		HTTPClient: c.HTTP, HTTPHeader: h,
	})
	if err != nil {
		if resp != nil && resp.StatusCode >= 300 {
			return nil, decodeError(resp)
		}
		return nil, err
	}
	ws.SetReadLimit(1 << 20)
	return &Conn{ws: ws}, nil
}

// Next returns the next message. An error frame from the server is returned
// as *ErrorFrame; a closed connection as an error carrying its close status
// (see websocket.CloseStatus).
func (c *Conn) Next(ctx context.Context) (Envelope, error) {
	for {
		_, data, err := c.ws.Read(ctx)
		if err != nil {
			return Envelope{}, err
		}
		var f struct {
			Type    string    `json:"type"`
			Message *Envelope `json:"message"`
			Error   *struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(data, &f); err != nil {
			return Envelope{}, fmt.Errorf("routing service: bad frame: %w", err)
		}
		switch f.Type {
		case "message":
			if f.Message != nil {
				return *f.Message, nil
			}
		case "error":
			if f.Error != nil {
				return Envelope{}, &ErrorFrame{Code: f.Error.Code, Message: f.Error.Message}
			}
		}
	}
}

// Ack acknowledges messages over the WebSocket.
func (c *Conn) Ack(ctx context.Context, ids ...string) error {
	b, err := json.Marshal(map[string]any{"type": "ack", "ids": ids})
	if err != nil {
		return err
	}
	return c.ws.Write(ctx, websocket.MessageText, b)
}

// WriteRaw sends a raw text frame (for tools and tests).
func (c *Conn) WriteRaw(ctx context.Context, data []byte) error {
	return c.ws.Write(ctx, websocket.MessageText, data)
}

// Close closes the connection normally.
func (c *Conn) Close() error { return c.ws.Close(websocket.StatusNormalClosure, "") }
