package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"
)

// TestFloorWritesEveryAcceptedBody runs the floor scenario briefly: every
// request answered 202 must have its body in the file, once, and the
// requests must have been committed in groups no larger than what was sent.
func TestFloorWritesEveryAcceptedBody(t *testing.T) {
	for _, sync := range []bool{true, false} {
		o, err := parseFlags([]string{"floor", "-senders", "8", "-recipients", "5", "-duration", "300ms", "-sync=" + strconv.FormatBool(sync)})
		if err != nil {
			t.Fatal(err)
		}
		tg, err := newTarget(o)
		if err != nil {
			t.Fatal(err)
		}
		e := &env{o: o, t: tg, log: io.Discard, hc: &http.Client{Timeout: 10 * time.Second}, tag: "t", ttl: time.Hour}
		s, err := runFloor(context.Background(), e)
		if err != nil {
			tg.close()
			t.Fatal(err)
		}
		bodies := readFloorLog(t, tg.floor.path)
		tg.close()
		if s.Accepted == 0 || s.Offered != s.Accepted || len(s.Errors) != 0 || s.Missing != 0 {
			t.Fatalf("sync %v: summary %+v", sync, s)
		}
		if s.Floor == nil || s.Floor.Fsync != sync || s.Floor.Commits < 1 || s.Floor.Commits > s.Accepted {
			t.Fatalf("sync %v: floor %+v for %d accepted", sync, s.Floor, s.Accepted)
		}
		if int64(len(bodies)) != s.Accepted {
			t.Fatalf("sync %v: %d bodies in the file, %d accepted", sync, len(bodies), s.Accepted)
		}
		for _, b := range bodies {
			var m struct {
				Recipient string `json:"recipient"`
				Payload   []byte `json:"payload"`
			}
			if err := json.Unmarshal(b, &m); err != nil || m.Recipient == "" || len(m.Payload) != o.payload {
				t.Fatalf("sync %v: body %q: %v", sync, b, err)
			}
		}
		if _, err := os.Stat(tg.floor.path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the floor's file is left after close: %v", err)
		}
	}
}

// readFloorLog returns the bodies in the floor server's file.
func readFloorLog(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var out [][]byte
	for {
		n, err := binary.ReadUvarint(r)
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			t.Fatalf("record %d: %v", len(out), err)
		}
		out = append(out, b)
	}
}
