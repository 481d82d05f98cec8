package main

import (
	"sync"
	"time"
)

// windowStat is one window of a run: how many deliveries it saw.
type windowStat struct {
	StartS        float64 `json:"start_s"`
	Seconds       float64 `json:"seconds"`
	Delivered     int64   `json:"delivered"`
	DeliveredPerS float64 `json:"delivered_per_s"`
}

// windows cuts a run into fixed windows of deliveries, so that a long run
// shows whether the rate holds (the first window against the last).
type windows struct {
	size  time.Duration
	start time.Time

	mu    sync.Mutex
	last  int64     // deliveries when the previous window closed
	lastT time.Time // when it closed
	stats []windowStat
}

// tick closes the window if it ended by now (its true length: the
// time since the previous one closed), given the run's deliveries
// so far. Called from the progress loop, once a second.
func (w *windows) tick(now time.Time, delivered int64) {
	if w == nil || w.size <= 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	end := w.start.Add(time.Duration(len(w.stats)+1) * w.size)
	if now.Before(end) {
		return
	}
	from := w.lastT
	if from.IsZero() {
		from = w.start
	}
	n, d := delivered-w.last, now.Sub(from)
	w.last, w.lastT = delivered, now
	w.stats = append(w.stats, windowStat{
		StartS:        from.Sub(w.start).Seconds(),
		Seconds:       d.Seconds(),
		Delivered:     n,
		DeliveredPerS: float64(n) / d.Seconds(),
	})
}

// result returns the closed windows and the last one's rate over the
// first one's (0 with fewer than two windows).
func (w *windows) result() ([]windowStat, float64) {
	if w == nil {
		return nil, 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	s := append([]windowStat(nil), w.stats...)
	if len(s) < 2 || s[0].DeliveredPerS == 0 {
		return s, 0
	}
	return s, s[len(s)-1].DeliveredPerS / s[0].DeliveredPerS
}
