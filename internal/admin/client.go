package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
)

// ErrNotRunning is returned by the Client when no service answers on the
// admin socket.
var ErrNotRunning = errors.New("no routing service is running on the admin socket")

// Error is an error answer of the admin endpoint.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message + " (" + e.Code + ")" }

// Client calls the admin endpoint of a running service over its socket.
// The zero value is not usable: use NewClient.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client of the admin socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: path, hc: &http.Client{Transport: tr}}
}

// List returns up to limit (0: the server's default) dead messages of
// queue, oldest first.
func (c *Client) List(ctx context.Context, queue string, limit int) ([]DeadMessage, error) {
	p := "/dlq/" + url.PathEscape(queue)
	if limit > 0 {
		p += "?limit=" + strconv.Itoa(limit)
	}
	var out ListResponse
	if err := c.do(ctx, http.MethodGet, p, nil, &out); err != nil {
		return nil, err
	}
	return out.Messages, nil
}

// Get returns one dead message of queue.
func (c *Client) Get(ctx context.Context, queue, id string) (DeadMessage, error) {
	var out DeadMessage
	err := c.do(ctx, http.MethodGet, "/dlq/"+url.PathEscape(queue)+"/"+url.PathEscape(id), nil, &out)
	return out, err
}

// Replay puts the dead messages with these ids (every one when ids is
// empty) back on their topic and returns how many it replayed.
func (c *Client) Replay(ctx context.Context, queue string, ids []string) (int, error) {
	return c.settle(ctx, queue, "replay", IDsRequest{IDs: ids, All: len(ids) == 0})
}

// Purge deletes the dead messages with these ids, or every one of the
// queue when all is true, and returns how many it deleted.
func (c *Client) Purge(ctx context.Context, queue string, ids []string, all bool) (int, error) {
	return c.settle(ctx, queue, "purge", IDsRequest{IDs: ids, All: all})
}

func (c *Client) settle(ctx context.Context, queue, action string, req IDsRequest) (int, error) {
	var out CountResponse
	err := c.do(ctx, http.MethodPost, "/dlq/"+url.PathEscape(queue)+"/"+action, req, &out)
	return out.Count, err
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://admin"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w (%s): start it with `routingservice serve`, or point --config at the service's configuration", ErrNotRunning, c.socket)
		}
		return fmt.Errorf("admin socket %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin socket %s: read answer: %w", c.socket, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(b, &eb) != nil || eb.Error.Code == "" {
			return &Error{Status: resp.StatusCode, Code: "http_" + strconv.Itoa(resp.StatusCode), Message: resp.Status}
		}
		return &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("admin socket %s: decode answer: %w", c.socket, err)
	}
	return nil
}
