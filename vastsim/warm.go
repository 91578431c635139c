package vastsim

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// Stop and start, as vast.ai does them (routing-and-scaling.md §2.1): a
// stop releases the GPU, which someone else may then rent; a start is
// "subject to resource availability on the machine" and waits in
// "scheduling" (intended_status running, storage billed only) until the
// machine's GPU is free again, possibly forever. The disk is machine-local,
// so the instance can only ever start on its own machine.
//
// The wait is resolved lazily, like the rest of the lifecycle: every API
// read and every control that frees a GPU calls scheduleLocked, which
// starts the scheduling instances whose GPU is now free.

// RentMachine simulates another user renting the GPUs of a machine: its
// offers leave the search, a create on them fails, and a stopped instance
// on it that is started waits in "scheduling" until ReleaseMachine. It
// does not disturb an instance that holds its GPU already.
func (s *Sim) RentMachine(machineID int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.taken == nil {
		s.taken = map[int64]bool{}
	}
	s.taken[machineID] = true
	s.logf("vastsim: machine %d rented by another user", machineID)
}

// ReleaseMachine ends RentMachine: the machine's offers come back and its
// scheduling instances start (loading, then running after StartDelay).
func (s *Sim) ReleaseMachine(machineID int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.taken, machineID)
	s.logf("vastsim: machine %d released", machineID)
	s.scheduleLocked(time.Now())
}

// MachineRented reports whether RentMachine holds a machine.
func (s *Sim) MachineRented(machineID int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.taken[machineID]
}

// holdsGPU reports whether an instance occupies its GPU: every state but
// stopped (scheduling included), until the record is gone. A destroyed
// instance keeps the GPU until it disappears, as before.
func (in *instance) holdsGPU(now time.Time) bool {
	return !in.gone(now) && !in.stopped
}

// gpuFreeLocked reports whether in could take its GPU now: its machine is
// not rented by someone else and no other instance holds its offer.
func (s *Sim) gpuFreeLocked(in *instance, now time.Time) bool {
	if s.taken[in.offer.MachineID] {
		return false
	}
	if in.offerID == 0 {
		return true
	}
	for _, o := range s.offers {
		if o.ID == in.offerID {
			return !o.removed && s.offerHolderLocked(o, now, in.id) == 0
		}
	}
	return true
}

// offerHolderLocked returns the id of an instance other than except that
// holds the offer's GPU, or 0.
func (s *Sim) offerHolderLocked(o *offerState, now time.Time, except int64) int64 {
	for id, in := range s.instances {
		if id != except && in.offerID == o.ID && in.holdsGPU(now) {
			return id
		}
	}
	return 0
}

// startOrScheduleLocked handles PUT state=running on a stopped instance.
func (s *Sim) startOrScheduleLocked(in *instance, now time.Time) {
	in.intended = "running"
	if !s.gpuFreeLocked(in, now) {
		if !in.scheduling {
			in.scheduling = true
			s.logf("vastsim: instance %d scheduling (machine %d's GPU is taken)", in.id, in.offer.MachineID)
		}
		return
	}
	in.scheduling = false
	s.restartLocked(in, now, false, s.opts.StartDelay)
	s.logf("vastsim: instance %d starting", in.id)
}

// scheduleLocked starts every scheduling instance whose GPU is free, the
// oldest request first (by id, which is good enough for a simulator).
func (s *Sim) scheduleLocked(now time.Time) {
	var waiting []*instance
	for _, in := range s.instances {
		if in.scheduling && in.stopped && !in.destroyed() {
			waiting = append(waiting, in)
		}
	}
	slices.SortFunc(waiting, func(a, b *instance) int { return cmp.Compare(a.id, b.id) })
	for _, in := range waiting {
		if s.gpuFreeLocked(in, now) {
			in.billLocked(now)
			in.scheduling = false
			s.restartLocked(in, now, false, s.opts.StartDelay)
			s.logf("vastsim: instance %d scheduled on machine %d, starting", in.id, in.offer.MachineID)
		}
	}
}

// createUnavailable answers a create on an offer whose machine cannot start
// it now, with cancel_unavail in force: the docs' 410 no_such_ask.
func createUnavailable(c *call, offerID int64) {
	writeJSON(c.w, http.StatusGone, map[string]any{
		"success": false, "error": "no_such_ask",
		"msg":    fmt.Sprintf("error 410/3907: no_such_ask Instance type %d is no longer available.", offerID),
		"ask_id": offerID,
	})
}

// cancelUnavail reads the create body's cancel_unavail: default true for an
// on-demand instance created running, false for a bid (vastai-api.md §8).
func cancelUnavail(body map[string]json.RawMessage, bid, running bool) (bool, error) {
	raw, ok := body["cancel_unavail"]
	if !ok || isNull(raw) {
		return !bid && running, nil
	}
	var v bool
	if err := json.Unmarshal(raw, &v); err != nil {
		return false, errors.New("'cancel_unavail' must be a boolean")
	}
	return v, nil
}

func (s *Sim) findOfferLocked(id int64) *offerState {
	for _, o := range s.offers {
		if o.ID == id {
			return o
		}
	}
	return nil
}

// offerUnavailLocked reports an offer that still exists but whose machine
// cannot start an instance now because someone else rented its GPU.
func (s *Sim) offerUnavailLocked(o *offerState, now time.Time) bool {
	return !o.removed && s.taken[o.MachineID] && s.offerHolderLocked(o, now, 0) == 0
}

// controlMachine serves POST /_sim/machines/{id}/rent|release.
func (s *Sim) controlMachine(rawID, action string, method func(...string) error) (any, error) {
	id, err := strconv.ParseInt(rawID, 10, 64)
	if err != nil || id <= 0 {
		return nil, controlErr(http.StatusBadRequest, "machine id %q is not a positive integer", rawID)
	}
	if err := method(http.MethodPost); err != nil {
		return nil, err
	}
	switch action {
	case "rent":
		s.RentMachine(id)
	case "release":
		s.ReleaseMachine(id)
	default:
		return nil, controlErr(http.StatusNotFound, "no such machine action %q (rent, release)", action)
	}
	return map[string]any{"machine_id": id, "rented": s.MachineRented(id)}, nil
}
