package app

// receivePaused shows in metrics when a consumer holds its messages because
// a backend it needs is down.
func (a *App) receivePaused(queue string, paused bool) {
	v := 0.0
	if paused {
		v = 1
	}
	a.metrics.ReceivePaused.WithLabelValues(queue).Set(v)
}
