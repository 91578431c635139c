package lifecycle

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

type offerCacheEntry struct {
	at     time.Time
	offers []vastclient.Offer
}

// priceEpsilon absorbs float noise in price comparisons.
const priceEpsilon = 1e-9

// mergeFilter returns base with the non-zero fields of o applied.
func mergeFilter(base OfferFilter, o *OfferFilter) OfferFilter {
	f := base.clone()
	if o == nil {
		return f
	}
	if o.GPUName != "" {
		f.GPUName = o.GPUName
	}
	if o.NumGPUs != 0 {
		f.NumGPUs = o.NumGPUs
	}
	if o.MinGPURAMGB != 0 {
		f.MinGPURAMGB = o.MinGPURAMGB
	}
	if o.MaxDPH != 0 {
		f.MaxDPH = o.MaxDPH
	}
	if o.MinReliability != 0 {
		f.MinReliability = o.MinReliability
	}
	if o.Verified {
		f.Verified = true
	}
	if len(o.Countries) > 0 {
		f.Countries = append([]string(nil), o.Countries...)
	}
	if o.MinDirectPorts != 0 {
		f.MinDirectPorts = o.MinDirectPorts
	}
	if o.MinCUDA != 0 {
		f.MinCUDA = o.MinCUDA
	}
	if o.Limit > 0 {
		f.Limit = o.Limit
	}
	if len(o.Extra) > 0 {
		if f.Extra == nil {
			f.Extra = map[string]map[string]any{}
		}
		for k, ops := range o.Extra {
			f.Extra[k] = ops
		}
	}
	return f
}

// minGPURAMMB converts a GB minimum into the driver-reported MB to compare
// with: GB×1000 minus 2% (never ×1024, which excludes every 24 GB card).
func minGPURAMMB(gb float64) float64 {
	return math.Floor(gb * 1000 * (1 - gpuRAMSlack))
}

// priceCap is the highest effective price an instance of the pool may cost.
func priceCap(p PoolTemplate) float64 { return p.MaxPricePerHour }

// buildQuery turns a pool's filter into an offer search. Every filter goes
// to the server, because unfiltered searches return a capped subset.
func buildQuery(p PoolTemplate, f OfferFilter, blocked []int64) vastclient.OfferQuery {
	flt := map[string]map[string]any{
		"rentable": {"eq": true},
		"rented":   {"eq": false},
	}
	if f.GPUName != "" {
		flt["gpu_name"] = map[string]any{"eq": f.GPUName}
	}
	if f.NumGPUs > 0 {
		flt["num_gpus"] = map[string]any{"eq": f.NumGPUs}
	}
	if f.MinGPURAMGB > 0 {
		flt["gpu_ram"] = map[string]any{"gte": minGPURAMMB(f.MinGPURAMGB)}
	}
	dphCap := f.MaxDPH
	if p.Type != TypeBid {
		// On-demand instances bill dph_total; for bids the offer's
		// dph_total is not what is paid, so the instance cap is applied to
		// the bid (below and in eligible) instead.
		if c := priceCap(p); c > 0 && (dphCap == 0 || c < dphCap) {
			dphCap = c
		}
	} else {
		flt["min_bid"] = map[string]any{"lte": p.BidPrice}
	}
	if dphCap > 0 {
		flt["dph_total"] = map[string]any{"lte": dphCap}
	}
	if f.MinReliability > 0 {
		flt["reliability2"] = map[string]any{"gte": f.MinReliability}
	}
	if f.Verified {
		flt["verified"] = map[string]any{"eq": true}
	}
	if len(f.Countries) > 0 {
		flt["geolocation"] = map[string]any{"in": append([]string(nil), f.Countries...)}
	}
	if f.MinDirectPorts > 0 {
		flt["direct_port_count"] = map[string]any{"gte": f.MinDirectPorts}
	}
	if f.MinCUDA > 0 {
		flt["cuda_max_good"] = map[string]any{"gte": f.MinCUDA}
	}
	if len(blocked) > 0 {
		flt["machine_id"] = map[string]any{"notin": append([]int64(nil), blocked...)}
	}
	for k, ops := range f.Extra {
		flt[k] = ops
	}
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultOfferLimit
	}
	return vastclient.OfferQuery{
		Filters:          flt,
		Order:            append([][2]string(nil), p.Order...),
		Type:             p.Type,
		Limit:            limit,
		AllocatedStorage: p.Disk,
	}
}

// effectivePrice is what an instance from the offer costs per hour: the
// offer's dph_total on demand; for a bid, the bid plus the offer's storage.
func effectivePrice(p PoolTemplate, o vastclient.Offer) float64 {
	if p.Type == TypeBid {
		return p.BidPrice + math.Max(0, o.DPHTotal-o.DPHBase)
	}
	return o.DPHTotal
}

// eligible re-checks an offer against the filter on the client side, so a
// server that ignores a filter cannot make the gateway rent the wrong thing
// or pay more than the cap. It returns why an offer is refused.
func eligible(p PoolTemplate, f OfferFilter, blocked map[int64]bool, o vastclient.Offer) (string, bool) {
	switch {
	case !o.Valid():
		return "no id", false
	case o.DPHTotal <= 0 || math.IsNaN(o.DPHTotal):
		return "no price", false
	case blocked[o.MachineID]:
		return "machine blocklisted", false
	case f.GPUName != "" && !strings.EqualFold(strings.TrimSpace(o.GPUName), f.GPUName):
		return "gpu_name", false
	case f.NumGPUs > 0 && o.NumGPUs != f.NumGPUs:
		return "num_gpus", false
	case f.MinGPURAMGB > 0 && o.GPURAM < minGPURAMMB(f.MinGPURAMGB):
		return "gpu_ram", false
	case f.MaxDPH > 0 && o.DPHTotal > f.MaxDPH+priceEpsilon:
		return "dph_total above max_dph", false
	case priceCap(p) > 0 && effectivePrice(p, o) > priceCap(p)+priceEpsilon:
		return "price above max_price_per_hour", false
	case p.Type == TypeBid && o.MinBid > p.BidPrice+priceEpsilon:
		return "min_bid above bid_price", false
	case f.MinReliability > 0 && o.Reliability2 < f.MinReliability:
		return "reliability2", false
	case f.Verified && o.Verification != "" && o.Verification != "verified":
		return "not verified", false
	case f.MinDirectPorts > 0 && o.DirectPortCount < f.MinDirectPorts:
		return "direct_port_count", false
	case f.MinCUDA > 0 && o.CUDAMaxGood < f.MinCUDA:
		return "cuda_max_good", false
	}
	if len(f.Countries) > 0 {
		cc := countryOf(o.Geolocation)
		ok := false
		for _, c := range f.Countries {
			if strings.EqualFold(c, cc) {
				ok = true
			}
		}
		if !ok {
			return "country", false
		}
	}
	return "", true
}

// countryOf extracts the two-letter code from "Region, CC".
func countryOf(geo string) string {
	if i := strings.LastIndex(geo, ","); i >= 0 {
		return strings.TrimSpace(geo[i+1:])
	}
	return strings.TrimSpace(geo)
}

// Offers searches the offers a pool would use, with overrides (non-zero
// fields replace the pool's filter; nil for none). Blocklisted machines and
// offers above the pool's price cap are excluded. Results are cached for
// OfferCacheTTL per query.
func (m *Manager) Offers(ctx context.Context, pool string, overrides *OfferFilter) ([]vastclient.Offer, error) {
	tpl, ok := m.cfg.Pools[pool]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownPool, pool)
	}
	return m.searchOffers(ctx, tpl, overrides)
}

func (m *Manager) searchOffers(ctx context.Context, tpl PoolTemplate, overrides *OfferFilter) ([]vastclient.Offer, error) {
	f := mergeFilter(tpl.Offer, overrides)
	blocked, err := m.loadBlocklist(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the machine blocklist: %w", err)
	}
	q := buildQuery(tpl, f, blocked)
	keyBytes, err := json.Marshal(q)
	if err != nil {
		return nil, fmt.Errorf("encoding offer query: %w", err)
	}
	key := string(keyBytes)

	now := time.Now()
	m.mu.Lock()
	e, hit := m.offerCache[key]
	m.mu.Unlock()
	var raw []vastclient.Offer
	if hit && now.Sub(e.at) < m.cfg.OfferCacheTTL {
		raw = e.offers
	} else {
		raw, err = m.api.SearchOffers(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("searching offers: %w", err)
		}
		m.mu.Lock()
		for k, old := range m.offerCache {
			if now.Sub(old.at) >= m.cfg.OfferCacheTTL {
				delete(m.offerCache, k)
			}
		}
		m.offerCache[key] = offerCacheEntry{at: now, offers: raw}
		m.mu.Unlock()
	}
	blockedSet := make(map[int64]bool, len(blocked))
	for _, id := range blocked {
		blockedSet[id] = true
	}
	out := make([]vastclient.Offer, 0, len(raw))
	for _, o := range raw {
		if _, ok := eligible(tpl, f, blockedSet, o); ok {
			out = append(out, o)
		}
	}
	return out, nil
}

// evictOffer drops an offer from every cached search: it was just rented
// (by us or, with no_such_ask, by someone else).
func (m *Manager) evictOffer(id int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, e := range m.offerCache {
		kept := make([]vastclient.Offer, 0, len(e.offers))
		for _, o := range e.offers {
			if o.ID != id {
				kept = append(kept, o)
			}
		}
		e.offers = kept
		m.offerCache[k] = e
	}
}

// findOffer looks one offer up by id. It is not cached: an explicit choice
// must be checked against the current market.
func (m *Manager) findOffer(ctx context.Context, id int64) (*vastclient.Offer, error) {
	offers, err := m.api.SearchOffers(ctx, vastclient.OfferQuery{
		Filters: map[string]map[string]any{"id": {"eq": id}},
		Limit:   5,
	})
	if err != nil {
		return nil, fmt.Errorf("looking up offer %d: %w", id, err)
	}
	for _, o := range offers {
		if o.ID == id {
			return &o, nil
		}
	}
	return nil, fmt.Errorf("%w: offer %d is not available", ErrNoOffers, id)
}

// candidateOffers returns the offers a provisioning may use: the requested
// offer (checked against the pool's price cap), or the pool's eligible
// offers in the pool's order.
func (m *Manager) candidateOffers(ctx context.Context, pool string, tpl PoolTemplate, offerID int64) ([]vastclient.Offer, error) {
	if offerID > 0 {
		o, err := m.findOffer(ctx, offerID)
		if err != nil {
			return nil, err
		}
		price := effectivePrice(tpl, *o)
		if c := priceCap(tpl); c > 0 && price > c+priceEpsilon {
			return nil, &BudgetError{Scope: ScopeInstance, Pool: pool, Limit: c, Requested: price}
		}
		return []vastclient.Offer{*o}, nil
	}
	offers, err := m.searchOffers(ctx, tpl, nil)
	if err != nil {
		return nil, err
	}
	if len(offers) == 0 {
		if c := priceCap(tpl); c > 0 {
			return nil, fmt.Errorf("%w for pool %q at or below max_price_per_hour $%.4f/h", ErrNoOffers, pool, c)
		}
		return nil, fmt.Errorf("%w for pool %q", ErrNoOffers, pool)
	}
	return offers, nil
}

// pickPrices returns the price to reserve against budgets for each of n
// new instances: the first n offers not being rented by another operation
// (the last one repeated when there are fewer). Reserving the price of an
// offer someone is already renting would underestimate.
func pickPrices(tpl PoolTemplate, offers []vastclient.Offer, inUse map[int64]bool, n int) []float64 {
	free := make([]vastclient.Offer, 0, len(offers))
	for _, o := range offers {
		if !inUse[o.ID] {
			free = append(free, o)
		}
	}
	if len(free) == 0 {
		free = offers
	}
	prices := make([]float64, n)
	for i := range prices {
		prices[i] = effectivePrice(tpl, free[min(i, len(free)-1)])
	}
	return prices
}
