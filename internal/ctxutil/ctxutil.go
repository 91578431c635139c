// Package ctxutil holds the context helpers that the engine packages share,
// so that each rule about waiting has one home.
package ctxutil

import (
	"context"
	"time"
)

// Sleep waits for d or until ctx ends, and returns ctx.Err() in the second
// case. A non-positive d does not wait but still reports a done ctx, so a
// loop that sleeps between tries stops promptly on cancellation.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
