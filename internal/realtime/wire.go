package realtime

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/gobwas/ws"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// The WebSocket wire format (RFC 6455) is gobwas/ws's: this file frames
// what the server writes and reads the client's messages.

// serverFrame returns payload as one unmasked server frame of type op,
// header included, ready to be written as it is (to any number of
// connections).
func serverFrame(op ws.OpCode, payload []byte) []byte {
	h := ws.Header{Fin: true, OpCode: op, Length: int64(len(payload))}
	b := make([]byte, 0, ws.HeaderSize(h)+len(payload))
	buf := bytes.NewBuffer(b)
	_ = ws.WriteHeader(buf, h) // cannot fail: the buffer has room
	buf.Write(payload)
	return buf.Bytes()
}

// closeFrame is a close frame with code and reason (cut to fit a control
// frame).
func closeFrame(code ws.StatusCode, reason string) []byte {
	if len(reason) > ws.MaxControlFramePayloadSize-2 {
		reason = reason[:ws.MaxControlFramePayloadSize-2]
	}
	return serverFrame(ws.OpClose, ws.NewCloseFrameBody(code, reason))
}

// encodeMessage returns the frame of a message event carrying env.
func encodeMessage(env *envelope.Envelope) ([]byte, error) {
	b, err := json.Marshal(messageFrame{Type: "message", Message: env})
	if err != nil {
		return nil, err
	}
	return serverFrame(ws.OpText, b), nil
}

// messageFramePrefix and messageFrameSuffix wrap an envelope's wire form
// into a message event: the JSON encodeMessage writes for it.
const (
	messageFramePrefix = `{"type":"message","message":`
	messageFrameSuffix = `}`
)

// encodeMessageWire returns the frame of a message event carrying the
// envelope whose wire form (envelope.Marshal's JSON) is wire: the bytes
// are copied into the frame as they are, never decoded and encoded
// again.
func encodeMessageWire(wire []byte) []byte {
	n := len(messageFramePrefix) + len(wire) + len(messageFrameSuffix)
	b := make([]byte, 0, ws.MaxHeaderSize+n)
	b = appendFrameHeader(b, ws.OpText, n)
	b = append(b, messageFramePrefix...)
	b = append(b, wire...)
	return append(b, messageFrameSuffix...)
}

// appendFrameHeader appends the header of an unmasked, final server frame
// of type op with n bytes of payload (RFC 6455 5.2): what ws.WriteHeader
// writes for it, without its buffer.
func appendFrameHeader(b []byte, op ws.OpCode, n int) []byte {
	b = append(b, 0x80|byte(op))
	switch {
	case n < 126:
		return append(b, byte(n))
	case n <= 0xffff:
		return append(b, 126, byte(n>>8), byte(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
}

// encodeError returns the frame of an error event.
func encodeError(code, message string) []byte {
	b, _ := json.Marshal(errorFrame{Type: "error", Error: errorDetail{Code: code, Message: message}})
	return serverFrame(ws.OpText, b)
}

// protocolError is a client frame that breaks the protocol: the connection
// is closed with its code.
type protocolError struct {
	code   ws.StatusCode
	reason string
}

func (e *protocolError) Error() string { return fmt.Sprintf("websocket %d: %s", e.code, e.reason) }

// tooBigError is a client message longer than the limit; remaining is
// what is left unread of the frame that crossed it.
type tooBigError struct{ remaining int64 }

func (e *tooBigError) Error() string { return "message too big" }

// errPeerClosed is a close frame from the client.
var errPeerClosed = errors.New("closed by the client")

// control handles one control frame from the client (payload unmasked).
type control func(op ws.OpCode, payload []byte) error

// readMessage reads one client message of at most max bytes from r,
// handling the control frames between its fragments with ctl. A control
// frame before a message is handled and returned alone (its opcode, no
// data), so that a reader does not wait for a message that may not come.
// A message over max is a *tooBigError, read up to the header of the frame
// that crosses the limit.
func readMessage(r io.Reader, max int64, ctl control) (ws.OpCode, []byte, error) {
	var (
		op      ws.OpCode
		msg     []byte
		hdr     [ws.MaxHeaderSize - 2]byte
		ctlBody [ws.MaxControlFramePayloadSize]byte
	)
	state := ws.StateServerSide
	for {
		h, err := ws.ReadHeaderBuffer(r, hdr[:])
		if err != nil {
			if errors.Is(err, ws.ErrHeaderLengthMSB) || errors.Is(err, ws.ErrHeaderLengthUnexpected) {
				return 0, nil, &protocolError{ws.StatusProtocolError, "bad frame header"}
			}
			return 0, nil, err
		}
		if err := ws.CheckHeader(h, state); err != nil {
			return 0, nil, &protocolError{ws.StatusProtocolError, err.Error()}
		}
		if h.OpCode.IsControl() {
			p := ctlBody[:h.Length]
			if _, err := io.ReadFull(r, p); err != nil {
				return 0, nil, err
			}
			ws.Cipher(p, h.Mask, 0)
			if err := ctl(h.OpCode, p); err != nil {
				return 0, nil, err
			}
			if msg == nil && !state.Fragmented() {
				// Between messages: nothing more need be waiting.
				return h.OpCode, nil, nil
			}
			continue
		}
		if h.OpCode != ws.OpContinuation {
			op = h.OpCode
		}
		if h.Length > max-int64(len(msg)) {
			return 0, nil, &tooBigError{remaining: h.Length}
		}
		n := len(msg)
		msg = slices.Grow(msg, int(h.Length))[:n+int(h.Length)]
		if _, err := io.ReadFull(r, msg[n:]); err != nil {
			return 0, nil, err
		}
		ws.Cipher(msg[n:], h.Mask, 0)
		if h.Fin {
			return op, msg, nil
		}
		state = state.Set(ws.StateFragmented)
	}
}
