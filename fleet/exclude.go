package fleet

// exclusion is an instance taken out of routing for good (it is being
// destroyed), with the reason shown in its member.
type exclusion struct {
	reason string
	// seen is set once the watcher knew the instance while excluded; the
	// exclusion is dropped when the instance is forgotten after that. An
	// instance excluded before its first listing stays excluded until then.
	seen bool
}

// Exclude takes an instance out of routing at once: its member becomes
// routable false with reason, and it leaves its pool's targets and routes.
// Requests in flight are not affected; no new one is routed to it. Unlike
// SetDraining it cannot be undone: it is meant for an instance being
// destroyed, and lasts until the instance is gone from the account.
func (w *Watcher) Exclude(id int64, reason string) {
	if reason == "" {
		reason = "excluded"
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.excluded == nil {
		w.excluded = map[int64]*exclusion{}
	}
	if e := w.excluded[id]; e != nil && e.reason == reason {
		return
	}
	w.excluded[id] = &exclusion{reason: reason, seen: w.known[id] != nil}
	w.publishLocked()
}

// excludedLocked returns the exclusion reasons to apply to the next
// snapshot and drops exclusions of instances that were known and are now
// forgotten. Called with w.mu held.
func (w *Watcher) excludedLocked() map[int64]string {
	if len(w.excluded) == 0 {
		return nil
	}
	out := make(map[int64]string, len(w.excluded))
	for id, e := range w.excluded {
		if w.known[id] == nil {
			if e.seen {
				delete(w.excluded, id)
			} else {
				out[id] = e.reason
			}
			continue
		}
		e.seen = true
		out[id] = e.reason
	}
	return out
}
