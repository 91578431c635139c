package vastclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// OfferQuery is an offer search. It marshals to the flat JSON object that
// POST /api/v0/bundles/ expects: each filter as an operator object next to
// the non-filter keys order, type, limit and allocated_storage.
type OfferQuery struct {
	// Filters maps a field to operators, for example
	// {"gpu_name": {"eq": "RTX 4090"}, "gpu_ram": {"gte": 24000}}. vast.ai
	// rejects bare values, which this type cannot express. Operators are
	// eq, neq, gt, gte, lt, lte, in and notin. Note that gpu_ram is in MB as
	// reported by the driver (a "24 GB" card reports 24564).
	Filters map[string]map[string]any
	// Order is a list of [field, "asc"|"desc"] pairs, for example
	// [["dph_total", "asc"]].
	Order [][2]string
	// Type is "on-demand", "bid" or "reserved"; empty leaves vast.ai's default.
	Type string
	// Limit caps the number of offers returned; 0 leaves vast.ai's default.
	Limit int
	// AllocatedStorage is the disk size in GB used to price dph_total; 0
	// leaves vast.ai's default.
	AllocatedStorage float64
}

// reservedQueryKeys are the non-filter keys of a search body; a filter with
// one of these names would be silently overwritten.
var reservedQueryKeys = map[string]bool{
	"order": true, "type": true, "limit": true, "allocated_storage": true,
}

// MarshalJSON renders the flat search object. It fails on a filter without
// operators or one named like a non-filter key.
func (q OfferQuery) MarshalJSON() ([]byte, error) {
	out := make(map[string]any, len(q.Filters)+4)
	for field, ops := range q.Filters {
		if field == "" {
			return nil, errors.New("vastclient: offer filter with an empty field name")
		}
		if reservedQueryKeys[field] {
			return nil, fmt.Errorf("vastclient: offer filter %q clashes with the query key of the same name", field)
		}
		if len(ops) == 0 {
			return nil, fmt.Errorf("vastclient: offer filter %q has no operator", field)
		}
		out[field] = ops
	}
	if len(q.Order) > 0 {
		out["order"] = q.Order
	}
	if q.Type != "" {
		out["type"] = q.Type
	}
	if q.Limit > 0 {
		out["limit"] = q.Limit
	}
	if q.AllocatedStorage > 0 {
		out["allocated_storage"] = q.AllocatedStorage
	}
	return json.Marshal(out)
}

// Offer is a rentable machine slice returned by an offer search. Decoding is
// tolerant, field by field, like Instance.
type Offer struct {
	// ID is the ask id to pass to CreateInstance.
	ID            int64 `json:"id"`
	AskContractID int64 `json:"ask_contract_id"`
	// MachineID is the key for machine blocklists.
	MachineID int64 `json:"machine_id"`
	HostID    int64 `json:"host_id"`

	NumGPUs int    `json:"num_gpus"`
	GPUName string `json:"gpu_name"`
	// GPURAM and GPUTotalRAM are in MB as reported by the driver.
	GPURAM      float64 `json:"gpu_ram"`
	GPUTotalRAM float64 `json:"gpu_total_ram"`

	// DPHTotal is the full $/hour price, storage at the queried size included.
	DPHTotal float64 `json:"dph_total"`
	DPHBase  float64 `json:"dph_base"`
	// MinBid is the minimum interruptible bid in $/hour; it is present on
	// on-demand offers too.
	MinBid float64 `json:"min_bid"`
	// StorageCost is in $/GB/month.
	StorageCost float64 `json:"storage_cost"`

	Reliability2 float64 `json:"reliability2"`
	// Verification is "verified", "unverified" or "deverified".
	Verification string `json:"verification"`
	// Geolocation is free text such as "Texas, US".
	Geolocation string `json:"geolocation"`
	// CUDAMaxGood is the advertised CUDA version; hosts have been seen
	// advertising more than their driver supports.
	CUDAMaxGood float64 `json:"cuda_max_good"`
	// DirectPortCount is the number of ports that can be opened directly.
	DirectPortCount int `json:"direct_port_count"`
	// DiskSpace is in GB.
	DiskSpace float64 `json:"disk_space"`
	// InetUp and InetDown are the machine's bandwidth in Mb/s.
	InetUp   float64 `json:"inet_up"`
	InetDown float64 `json:"inet_down"`
	Rentable bool    `json:"rentable"`
}

// Valid reports whether the offer carried a usable id.
func (o *Offer) Valid() bool { return o.ID > 0 }

// UnmarshalJSON decodes an offer tolerantly. It fails only when the value is
// not a JSON object.
func (o *Offer) UnmarshalJSON(b []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*o = Offer{
		ID:              flexInt(m["id"]),
		AskContractID:   flexInt(m["ask_contract_id"]),
		MachineID:       flexInt(m["machine_id"]),
		HostID:          flexInt(m["host_id"]),
		NumGPUs:         int(flexInt(m["num_gpus"])),
		GPUName:         flexString(m["gpu_name"]),
		GPURAM:          flexFloat(m["gpu_ram"]),
		GPUTotalRAM:     flexFloat(m["gpu_total_ram"]),
		DPHTotal:        flexFloat(m["dph_total"]),
		DPHBase:         flexFloat(m["dph_base"]),
		MinBid:          flexFloat(m["min_bid"]),
		StorageCost:     flexFloat(m["storage_cost"]),
		Reliability2:    flexFloat(m["reliability2"]),
		Verification:    flexString(m["verification"]),
		Geolocation:     flexString(m["geolocation"]),
		CUDAMaxGood:     flexFloat(m["cuda_max_good"]),
		DirectPortCount: int(flexInt(m["direct_port_count"])),
		DiskSpace:       flexFloat(m["disk_space"]),
		InetUp:          flexFloat(m["inet_up"]),
		InetDown:        flexFloat(m["inet_down"]),
		Rentable:        flexBool(m["rentable"]),
	}
	return nil
}

// decodeOffers reads the "offers" value: an array (the real API), a single
// object (the documentation's example) or null. Offers without a valid id
// cannot be rented and are dropped.
func decodeOffers(raw json.RawMessage) ([]Offer, error) {
	t := bytes.TrimSpace(raw)
	if isNull(t) {
		return []Offer{}, nil
	}
	var rows []json.RawMessage
	switch t[0] {
	case '[':
		if err := json.Unmarshal(t, &rows); err != nil {
			return nil, errors.New(`"offers" is not a valid array`)
		}
	case '{':
		rows = []json.RawMessage{t}
	default:
		return nil, errors.New(`"offers" is neither an array nor an object`)
	}
	offers := make([]Offer, 0, len(rows))
	for _, row := range rows {
		var o Offer
		if o.UnmarshalJSON(row) == nil && o.Valid() {
			offers = append(offers, o)
		}
	}
	return offers, nil
}

// SearchOffers searches the rentable offers. Offers are volatile: one may be
// gone by the time it is rented (ErrNoSuchAsk from CreateInstance).
func (c *Client) SearchOffers(ctx context.Context, q OfferQuery) ([]Offer, error) {
	body, err := json.Marshal(q)
	if err != nil {
		return nil, fmt.Errorf("vastclient: encoding offer query: %w", err)
	}
	cl := &call{ep: EndpointSearch, method: http.MethodPost, tmpl: "/api/v0/bundles/", path: "/api/v0/bundles/", body: body}
	resp, err := c.do(ctx, cl)
	if err != nil {
		return nil, c.wrap(err)
	}
	m, err := c.decodeObject(cl, resp)
	if err != nil {
		return nil, c.wrap(err)
	}
	raw, ok := m["offers"]
	if !ok {
		return nil, c.wrap(c.unexpected(cl, resp, `no "offers" key`))
	}
	offers, err := decodeOffers(raw)
	if err != nil {
		return nil, c.wrap(c.unexpected(cl, resp, err.Error()))
	}
	return offers, nil
}
