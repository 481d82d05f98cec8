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

// Error is an error answer of the service: an HTTP answer, or a send
// refused over the WebSocket (send_error), whose Status is the one the
// HTTP API answers with its Code.
type Error struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
	// Index is the message of SendBatch's batch at fault (0-based), or -1
	// when the error names none.
	Index int
}

func (e *Error) Error() string {
	if e.Index >= 0 {
		return fmt.Sprintf("routing service: %d %s: message %d: %s", e.Status, e.Code, e.Index, e.Message)
	}
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
			Index   *int   `json:"index"`
		} `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_ = json.Unmarshal(b, &body)
	e := &Error{Status: resp.StatusCode, Code: body.Error.Code, Message: body.Error.Message, Index: -1}
	if body.Error.Index != nil {
		e.Index = *body.Error.Index
	}
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

// SendBatch sends msgs in one request (POST /v1/messages/batch): all are
// accepted in one durable commit, or none is. The answers are in the
// order of msgs. An *Error whose Index is not -1 names the message at
// fault; whatever the error, nothing was accepted. Give each message an
// IdempotencyKey to make sending the batch again safe.
func (c *Client) SendBatch(ctx context.Context, msgs []Message) ([]Accepted, error) {
	var out struct {
		Messages []Accepted `json:"messages"`
	}
	if err := c.do(ctx, http.MethodPost, "/v1/messages/batch", map[string][]Message{"messages": msgs}, &out); err != nil {
		return nil, err
	}
	if len(out.Messages) != len(msgs) {
		return nil, fmt.Errorf("routing service: batch of %d messages answered with %d", len(msgs), len(out.Messages))
	}
	return out.Messages, nil
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

	mu      sync.Mutex
	seq     uint64
	pending map[string]chan sendAnswer // sends not answered yet, by ref
	lost    error                      // why the connection ended; no send waits once set
}

// sendAnswer is the answer to a send over the connection.
type sendAnswer struct {
	acc Accepted
	err error
}

// ErrUnanswered is the error of a send whose connection ended before the
// service answered it: it may or may not have been accepted. Send it
// again with the same IdempotencyKey (over HTTP or a new connection) to
// learn which, without delivering it twice.
var ErrUnanswered = errors.New("routing service: the connection ended before the send was answered; it may have been accepted: send it again with the same idempotency key")

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
	return &Conn{ws: ws, pending: map[string]chan sendAnswer{}}, nil
}

// Next returns the next message. An error frame from the server is returned
// as *ErrorFrame; a closed connection as an error carrying its close status
// (see websocket.CloseStatus).
//
// Next also reads the answers to the connection's sends (see Send): a
// connection that sends must be read.
func (c *Conn) Next(ctx context.Context) (Envelope, error) {
	for {
		_, data, err := c.ws.Read(ctx)
		if err != nil {
			c.fail(err)
			return Envelope{}, err
		}
		var f struct {
			Type    string    `json:"type"`
			Message *Envelope `json:"message"`
			Error   *struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
			Ref        string    `json:"ref"`
			ID         string    `json:"id"`
			CreatedAt  time.Time `json:"created_at"`
			RetryAfter int       `json:"retry_after"`
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
		case "sent":
			c.answer(f.Ref, sendAnswer{acc: Accepted{ID: f.ID, CreatedAt: f.CreatedAt}})
		case "send_error":
			e := &Error{Index: -1, RetryAfter: time.Duration(f.RetryAfter) * time.Second}
			if f.Error != nil {
				e.Code, e.Message = f.Error.Code, f.Error.Message
			}
			e.Status = statusOf(e.Code)
			c.answer(f.Ref, sendAnswer{err: e})
		}
	}
}

// Send sends m over the connection and waits for the service's answer,
// which Next reads: call Next from another goroutine meanwhile (as a
// receiving client does), or the answer is never read. Many sends may
// wait at once; each answer is matched to its send. The service refuses
// a send as POST /v1/messages would (an *Error with that answer's Status
// and Code). If the connection ends first, the error wraps ErrUnanswered.
func (c *Conn) Send(ctx context.Context, m Message) (Accepted, error) {
	ch := make(chan sendAnswer, 1)
	c.mu.Lock()
	if c.lost != nil {
		err := c.lost
		c.mu.Unlock()
		return Accepted{}, fmt.Errorf("routing service: connection closed: %w", err)
	}
	c.seq++
	ref := strconv.FormatUint(c.seq, 36)
	c.pending[ref] = ch
	c.mu.Unlock()
	b, err := json.Marshal(struct {
		Type    string  `json:"type"`
		Ref     string  `json:"ref"`
		Message Message `json:"message"`
	}{"send", ref, m})
	if err == nil {
		err = c.ws.Write(ctx, websocket.MessageText, b)
	}
	if err != nil {
		c.forget(ref)
		if ctx.Err() == nil {
			// The frame may have gone out before the connection broke.
			return Accepted{}, fmt.Errorf("%w (%v)", ErrUnanswered, err)
		}
		return Accepted{}, err
	}
	select {
	case a := <-ch:
		return a.acc, a.err
	case <-ctx.Done():
		c.forget(ref)
		return Accepted{}, ctx.Err()
	}
}

// answer hands the answer of the send of ref to its sender.
func (c *Conn) answer(ref string, a sendAnswer) {
	c.mu.Lock()
	ch := c.pending[ref]
	delete(c.pending, ref)
	c.mu.Unlock()
	if ch != nil {
		ch <- a // buffered: never blocks
	}
}

func (c *Conn) forget(ref string) {
	c.mu.Lock()
	delete(c.pending, ref)
	c.mu.Unlock()
}

// fail ends the sends waiting for an answer: the connection ended (cause).
func (c *Conn) fail(cause error) {
	c.mu.Lock()
	if c.lost == nil {
		c.lost = cause
	}
	pending := c.pending
	c.pending = map[string]chan sendAnswer{}
	c.mu.Unlock()
	for _, ch := range pending {
		ch <- sendAnswer{err: fmt.Errorf("%w (%v)", ErrUnanswered, cause)}
	}
}

// statusOf is the HTTP status the API answers with code.
func statusOf(code string) int {
	switch code {
	case "malformed_json", "bad_request", "invalid_recipient", "invalid_payload", "invalid_parameter":
		return http.StatusBadRequest
	case "payload_too_large", "body_too_large", "batch_too_large":
		return http.StatusRequestEntityTooLarge
	case "idempotency_key_reused":
		return http.StatusConflict
	case "rate_limited", "recipient_queue_full", "sender_quota_exceeded":
		return http.StatusTooManyRequests
	case "backend_unavailable":
		return http.StatusServiceUnavailable
	case "internal_error":
		return http.StatusInternalServerError
	}
	return 0
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

// Close closes the connection normally; sends still waiting end with
// ErrUnanswered.
func (c *Conn) Close() error {
	err := c.ws.Close(websocket.StatusNormalClosure, "")
	c.fail(errors.New("connection closed"))
	return err
}
