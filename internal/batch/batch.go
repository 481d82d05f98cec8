// Package batch gathers the values waiting on a channel into batches: one
// value waited for, then whatever else is already waiting, up to a bound.
// A batch never waits for a value that is not there yet, so a lone value
// goes out at once and a burst goes out in as few batches as the bound
// allows. Every loop of the service that batches what waits on a channel
// (the bus's receivers and workers, the group commit, the in-process
// hand-off of routing events) is written with it.
package batch

import "context"

// Drain hands add the values waiting on c, one at a time and without
// waiting for more, for as long as add reports room for another. It
// reports false when c is closed and empty (true when nothing more
// waits, or add is full).
func Drain[T any](c <-chan T, add func(T) (more bool)) (open bool) {
	for {
		select {
		case v, ok := <-c:
			if !ok {
				return false
			}
			if !add(v) {
				return true
			}
		default:
			return true
		}
	}
}

// Fill appends to b the values waiting on c, without waiting, until b
// holds max values. It reports false when c is closed (b then holds what
// was waiting before).
func Fill[T any](b []T, c <-chan T, max int) ([]T, bool) {
	if len(b) >= max {
		return b, true
	}
	open := Drain(c, func(v T) bool {
		b = append(b, v)
		return len(b) < max
	})
	return b, open
}

// Next waits for a value on c, then appends it and the values waiting
// after it to b, up to max values in b. It reports false, with b as it
// was, when ctx ends or c is closed before a value comes.
func Next[T any](ctx context.Context, b []T, c <-chan T, max int) ([]T, bool) {
	select {
	case v, ok := <-c:
		if !ok {
			return b, false
		}
		b, _ = Fill(append(b, v), c, max)
		return b, true
	case <-ctx.Done():
		return b, false
	}
}
