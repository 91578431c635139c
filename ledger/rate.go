// Package ledger keeps what a gateway's vast.ai instances have cost: spend
// accrued per instance from the rates of its successive listings, split at
// UTC day boundaries, and persisted so that it outlives the instance, config
// reloads and restarts. It is Caddy-free; the root package feeds it the
// watcher's snapshots and gives it Caddy's storage.
package ledger

import "github.com/caddy-vastai/caddy-vastai/vastclient"

// Rate is what an instance bills per hour now, by its status. It is the one
// rule for "what does this instance cost" (vastai-api.md §9, §10):
//
//   - gone (cur_state "unloaded", or actual_status "destroyed"): nothing;
//   - stopped or exited: its storage only (storage_total_cost, the disk that
//     stays allocated; 0 when the API does not say);
//   - not running yet (null, "created", "loading"): the GPU is not billed
//     yet, the disk is: storage only;
//   - running, frozen, rebooting and anything else: dph_total. Unknown
//     values count as the full rate, since over-counting a live contract is
//     safer than calling it free.
func Rate(in *vastclient.Instance) float64 {
	switch {
	case gone(in):
		return 0
	case stopped(in) || in.ActualStatus == "exited":
		return in.StorageTotalCost
	case Starting(in):
		return in.StorageTotalCost
	}
	return in.DPHTotal
}

// Starting reports whether an instance has not run yet (actual_status null,
// "created" or "loading") and is neither gone nor stopped: its GPU is not
// billed yet, and will be once it runs. Budgets count such an instance at
// its full dph_total (lifecycle's budgetRate), as they count a create in
// progress: Rate says what it bills now, not what it is committed to.
func Starting(in *vastclient.Instance) bool {
	if gone(in) || stopped(in) {
		return false
	}
	return in.ActualStatus == "" || in.ActualStatus == "created" || in.ActualStatus == "loading"
}

// gone: released (cur_state "unloaded") or destroyed.
func gone(in *vastclient.Instance) bool {
	return in.CurState == "unloaded" || in.ActualStatus == "destroyed"
}

// stopped: stopped by the user or outbid; its disk still bills.
func stopped(in *vastclient.Instance) bool {
	return in.ActualStatus == "stopped" || in.CurState == "stopped"
}

// Status is the billing status Rate decided on, for the rate history:
// "gone", "stopped", "loading" (not running yet) or the actual_status.
func Status(in *vastclient.Instance) string {
	switch {
	case gone(in):
		return "gone"
	case stopped(in):
		return "stopped"
	case in.ActualStatus == "":
		return "provisioning"
	}
	return in.ActualStatus
}
