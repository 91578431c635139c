package vastsim

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// storedColumns are the contract columns the v1 list can filter and order
// on. Computed columns (dph_total, num_gpus, duration, ...) are rejected,
// as vast.ai does.
var storedColumns = map[string]bool{
	"id": true, "label": true, "actual_status": true, "intended_status": true,
	"cur_state": true, "next_state": true, "status_msg": true, "gpu_name": true,
	"machine_id": true, "host_id": true, "bundle_id": true, "verification": true,
	"image_uuid": true, "image_runtype": true, "template_id": true,
	"template_hash_id": true, "start_date": true, "end_date": true,
	"public_ipaddr": true, "is_bid": true, "disk_space": true,
}

const (
	listMaxLimit     = 25
	listDefaultLimit = 25
	listZeroLimit    = 5
)

// badQuery is the v1 list's 400 shape: no "success" key.
func badQuery(w http.ResponseWriter, code, msg string) {
	writeJSON(w, http.StatusBadRequest, map[string]any{"error": code, "msg": msg})
}

func parseOrderBy(raw string) ([]sortKey, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, nil
	}
	var items []any
	if err := decodeJSON([]byte(raw), &items); err != nil {
		return nil, errors.New("Error in query parameters: order_by must be a JSON list")
	}
	var keys []sortKey
	for _, it := range items {
		var col, dir string
		switch v := it.(type) {
		case map[string]any:
			col, _ = v["col"].(string)
			dir, _ = v["dir"].(string)
		case []any:
			if len(v) > 0 {
				col, _ = v[0].(string)
			}
			if len(v) > 1 {
				dir, _ = v[1].(string)
			}
		case string:
			col = v
		}
		if !storedColumns[col] {
			return nil, fmt.Errorf("Error in query parameters: %s is not a valid order_by column", col)
		}
		keys = append(keys, sortKey{Col: col, Desc: strings.EqualFold(dir, "desc")})
	}
	return keys, nil
}

func parseSelectFilters(raw string) ([]cond, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, nil
	}
	var obj map[string]any
	if err := decodeJSON([]byte(raw), &obj); err != nil || obj == nil {
		return nil, errors.New("Error in query parameters: select_filters must be a JSON object")
	}
	fields := make([]string, 0, len(obj))
	for k := range obj {
		fields = append(fields, k)
	}
	sort.Strings(fields)
	var conds []cond
	for _, f := range fields {
		if !storedColumns[f] {
			return nil, fmt.Errorf("Error in query parameters: %s is not a valid search key", f)
		}
		ops, ok := obj[f].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("Error in query parameters: %s filter must be an object such as {\"eq\": value}", f)
		}
		for op, v := range ops {
			cop, ok := canonicalOp(op)
			if !ok {
				return nil, fmt.Errorf("Error in query parameters: %s is not a valid operator for %s", op, f)
			}
			if _, isList := v.([]any); (cop == "in" || cop == "notin") && !isList {
				return nil, fmt.Errorf("Error in query parameters: %s %s expects a list", f, op)
			}
			conds = append(conds, cond{field: f, op: cop, val: v})
		}
	}
	return conds, nil
}

func parseSelectCols(raw string) ([]string, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, nil
	}
	var cols []string
	if err := decodeJSON([]byte(raw), &cols); err != nil {
		return nil, errors.New("Error in query parameters: select_cols must be a JSON list of column names")
	}
	if slices.Contains(cols, "*") {
		return nil, nil
	}
	return cols, nil
}

// cursor is the content of an opaque next_token: the sort values and id of
// the last row served, bound to the ordering it was issued for.
type cursor struct {
	Values []any  `json:"v"`
	ID     int64  `json:"id"`
	Order  string `json:"o"`
}

func orderSig(keys []sortKey) string {
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		d := "asc"
		if k.Desc {
			d = "desc"
		}
		parts = append(parts, k.Col+":"+d)
	}
	return strings.Join(parts, ",")
}

func (s *Sim) sign(payload []byte) []byte {
	m := hmac.New(sha256.New, s.secret)
	m.Write(payload)
	return m.Sum(nil)[:12]
}

func (s *Sim) encodeCursor(row map[string]any, keys []sortKey) string {
	c := cursor{Order: orderSig(keys)}
	for _, k := range keys {
		c.Values = append(c.Values, row[k.Col])
	}
	c.ID, _ = row["id"].(int64)
	payload, _ := json.Marshal(c)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(payload) + "." + enc.EncodeToString(s.sign(payload))
}

// decodeCursor returns the pseudo-row the next page starts after.
func (s *Sim) decodeCursor(tok string, keys []sortKey) (map[string]any, bool) {
	enc := base64.RawURLEncoding
	p, sig, ok := strings.Cut(tok, ".")
	if !ok {
		return nil, false
	}
	payload, err1 := enc.DecodeString(p)
	mac, err2 := enc.DecodeString(sig)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, s.sign(payload)) {
		return nil, false
	}
	var c cursor
	if decodeJSON(payload, &c) != nil || c.Order != orderSig(keys) || len(c.Values) != len(keys) {
		return nil, false
	}
	row := map[string]any{"id": c.ID}
	for i, k := range keys {
		if k.Col != "id" {
			row[k.Col] = c.Values[i]
		}
	}
	return row, true
}

// handleList serves GET /api/v1/instances/ (§6).
func (s *Sim) handleList(c *call) {
	q := c.r.URL.Query()
	limit := listDefaultLimit
	if v := strings.TrimSpace(q.Get("limit")); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			badQuery(c.w, "invalid_request", "Error in query parameters: limit must be an integer")
			return
		}
		switch {
		case n <= 0:
			limit = listZeroLimit
		case n < listMaxLimit:
			limit = n
		default:
			limit = listMaxLimit
		}
	}
	keys, err := parseOrderBy(q.Get("order_by"))
	if err != nil {
		badQuery(c.w, "invalid_request", err.Error())
		return
	}
	conds, err := parseSelectFilters(q.Get("select_filters"))
	if err != nil {
		badQuery(c.w, "invalid_request", err.Error())
		return
	}
	cols, err := parseSelectCols(q.Get("select_cols"))
	if err != nil {
		badQuery(c.w, "invalid_request", err.Error())
		return
	}
	var after map[string]any
	if tok := q.Get("after_token"); tok != "" {
		var ok bool
		if after, ok = s.decodeCursor(tok, keys); !ok {
			badQuery(c.w, "invalid_token", "Invalid after_token: "+tok)
			return
		}
	}

	omit := map[int64]bool{}
	for _, id := range c.fault.OmitFromList {
		omit[id] = true
	}
	s.mu.Lock()
	now := time.Now()
	var rows []map[string]any
	for _, in := range s.visibleLocked(now) {
		if omit[in.id] {
			continue
		}
		m := s.instanceJSON(in, now)
		keep := true
		for _, cd := range conds {
			if !matchCond(m[cd.field], cd.op, cd.val) {
				keep = false
				break
			}
		}
		if keep {
			rows = append(rows, m)
		}
	}
	s.mu.Unlock()

	sortRows(rows, keys, "id")
	total := len(rows)
	labels := map[string]int{}
	for _, m := range rows {
		l, _ := m["label"].(string)
		labels[l]++
	}
	if after != nil {
		i := sort.Search(len(rows), func(i int) bool { return rowLess(after, rows[i], keys, "id") })
		rows = rows[i:]
	}
	var next any
	if len(rows) > limit {
		rows = rows[:limit]
		next = s.encodeCursor(rows[limit-1], keys)
	}
	page := make([]any, 0, len(rows))
	for _, m := range rows {
		if cols != nil {
			p := make(map[string]any, len(cols))
			for _, col := range cols {
				p[col] = m[col] // unknown columns come back as null
			}
			m = p
		}
		page = append(page, m)
	}
	writeJSON(c.w, http.StatusOK, map[string]any{
		"success":         true,
		"instances_found": len(page),
		"total_instances": total,
		"label_counts":    labels,
		"next_token":      next,
		"instances":       page,
	})
}

// handleV0List answers the retired v0 list like vast.ai now does: 410,
// whatever the query, so a client still using it fails loudly.
func (s *Sim) handleV0List(c *call) {
	writeJSON(c.w, http.StatusGone, map[string]any{
		"success": false, "error": "deprecated_endpoint",
		"msg": "/api/v0/instances/ is deprecated. Use /api/v1/instances/ instead.",
	})
}

func parseID(s string) (int64, bool) {
	id, err := strconv.ParseInt(s, 10, 64)
	return id, err == nil && id > 0
}

// handleShow serves GET /api/v0/instances/{id}/: a single object under the
// plural key, and HTTP 200 {"instances": null} once it is gone or unknown.
func (s *Sim) handleShow(c *call) {
	id, ok := parseID(c.ids[0])
	if !ok {
		writeJSON(c.w, http.StatusOK, map[string]any{"instances": nil})
		return
	}
	s.mu.Lock()
	now := time.Now()
	var obj any
	if in := s.lookupLocked(id, now); in != nil {
		obj = s.instanceJSON(in, now)
	}
	s.mu.Unlock()
	writeJSON(c.w, http.StatusOK, map[string]any{"instances": obj})
}

// readObject reads a JSON object body; an empty body counts as {}.
func readObject(r *http.Request) (map[string]json.RawMessage, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return map[string]json.RawMessage{}, nil
	}
	var m map[string]json.RawMessage
	if err := decodeJSON(body, &m); err != nil || m == nil {
		return nil, errors.New("request body must be a JSON object")
	}
	return m, nil
}

func isNull(raw json.RawMessage) bool {
	return len(raw) == 0 || string(bytes.TrimSpace(raw)) == "null"
}

// optString decodes an optional string field; null and absent give nil.
func optString(m map[string]json.RawMessage, key string) (*string, error) {
	raw, ok := m[key]
	if !ok || isNull(raw) {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("'%s' must be a string", key)
	}
	return &s, nil
}

// handleManage serves PUT /api/v0/instances/{id}/: {"label": ...} and
// {"state": "stopped"|"running"}.
func (s *Sim) handleManage(c *call) {
	id, ok := parseID(c.ids[0])
	if !ok {
		writeErr(c.w, http.StatusNotFound, "no_such_instance", fmt.Sprintf("Instance %s not found.", c.ids[0]))
		return
	}
	body, err := readObject(c.r)
	if err != nil {
		writeErr(c.w, http.StatusBadRequest, "invalid_args", err.Error())
		return
	}
	_, hasLabel := body["label"]
	label, err := optString(body, "label")
	if err != nil {
		writeErr(c.w, http.StatusBadRequest, "invalid_args", err.Error())
		return
	}
	if label != nil && len(*label) > 1024 {
		writeErr(c.w, http.StatusBadRequest, "label_too_long", "Label is too long: the maximum is 1024 characters.")
		return
	}
	state, err := optString(body, "state")
	if err != nil || (state != nil && *state != "stopped" && *state != "running") {
		writeErr(c.w, http.StatusBadRequest, "invalid_args", "'state' must be \"running\" or \"stopped\".")
		return
	}
	if !hasLabel && state == nil {
		writeErr(c.w, http.StatusBadRequest, "invalid_args", "Nothing to update: expected 'label' or 'state'.")
		return
	}

	s.mu.Lock()
	now := time.Now()
	in := s.lookupLocked(id, now)
	if in == nil || in.destroyed() {
		s.mu.Unlock()
		writeErr(c.w, http.StatusNotFound, "no_such_instance", fmt.Sprintf("Instance %d not found.", id))
		return
	}
	if hasLabel {
		if label == nil || *label == "" {
			in.label = nil
		} else {
			v := *label
			in.label = &v
		}
	}
	if state != nil {
		s.setStateLocked(in, *state, now)
	}
	s.mu.Unlock()

	resp := map[string]any{"success": true}
	if hasLabel {
		l := ""
		if label != nil {
			l = *label
		}
		resp["msg"] = fmt.Sprintf("label for %d set to '%s'", id, l)
	}
	writeJSON(c.w, http.StatusOK, resp)
}

// setStateLocked applies PUT {"state": ...}: a stop releases the GPU (and
// may let a scheduling instance take it); a start needs the GPU (warm.go).
func (s *Sim) setStateLocked(in *instance, state string, now time.Time) {
	switch state {
	case "stopped":
		in.scheduling = false
		if !in.stopped {
			in.stopped = true
			in.manual = ""
			s.stopEngineLocked(in)
			s.logf("vastsim: instance %d stopped", in.id)
			s.scheduleLocked(now) // its GPU is free for whoever waits
		}
		in.intended = "stopped"
	case "running":
		switch {
		case in.stopped:
			s.startOrScheduleLocked(in, now)
		case isDeadStatus(in.manual):
			s.restartLocked(in, now, false, s.opts.LoadingDelay)
			s.logf("vastsim: instance %d starting", in.id)
		}
		in.intended = "running"
	}
}

// isDeadStatus reports statuses whose container is not running, which a
// start request revives.
func isDeadStatus(st string) bool {
	switch st {
	case "exited", "stopped", "offline":
		return true
	}
	return false
}

// restartLocked takes the instance through loading again with a fresh
// engine. reuse keeps the host ports (reboot); a start after stop may get
// new ones, as on vast.ai. The old engine is closed first so that its
// ports can be rebound.
func (s *Sim) restartLocked(in *instance, now time.Time, reuse bool, delay time.Duration) {
	s.stopEngineLocked(in)
	in.stopped = false
	in.scheduling = false
	in.manual = ""
	in.intended = "running"
	in.readyOverride = nil
	in.nullUntil = now
	in.runningAt = now.Add(delay)
	if err := s.startEngineLocked(in, reuse); err != nil {
		s.logf("vastsim: instance %d: %v", in.id, err)
	}
}

// handleReboot serves PUT /api/v0/instances/reboot/{id}/ and recycle: the
// container restarts in place (same id, same ports) through "loading".
func (s *Sim) handleReboot(c *call) {
	id, ok := parseID(c.ids[0])
	s.mu.Lock()
	now := time.Now()
	var in *instance
	if ok {
		in = s.lookupLocked(id, now)
	}
	if in == nil || in.destroyed() {
		s.mu.Unlock()
		writeErr(c.w, http.StatusNotFound, "no_such_instance", fmt.Sprintf("Instance %s not found.", c.ids[0]))
		return
	}
	if in.stopped {
		s.mu.Unlock()
		writeErr(c.w, http.StatusBadRequest, "invalid_args", "Instance is stopped; start it instead.")
		return
	}
	s.restartLocked(in, now, true, s.opts.LoadingDelay)
	s.mu.Unlock()
	writeJSON(c.w, http.StatusOK, map[string]any{"success": true})
}

// handleDestroy serves DELETE /api/v0/instances/{id}/. The engine dies at
// once; the record lingers for DestroyDelay with cur_state "unloaded". A
// repeated DELETE inside that window succeeds again (the record still
// exists); after it, the id is unknown and answers 404 not_found.
func (s *Sim) handleDestroy(c *call) {
	id, ok := parseID(c.ids[0])
	s.mu.Lock()
	now := time.Now()
	var in *instance
	if ok {
		in = s.lookupLocked(id, now)
	}
	if in == nil {
		s.mu.Unlock()
		writeErr(c.w, http.StatusNotFound, "not_found", fmt.Sprintf("Instance %s not found.", c.ids[0]))
		return
	}
	s.destroyLocked(in, now)
	s.mu.Unlock()
	writeJSON(c.w, http.StatusOK, map[string]any{"success": true})
}

// handleSSHAttach serves POST /api/v0/instances/{id}/ssh/.
func (s *Sim) handleSSHAttach(c *call) {
	id, _ := parseID(c.ids[0])
	body, err := readObject(c.r)
	if err != nil {
		writeErr(c.w, http.StatusBadRequest, "invalid_args", err.Error())
		return
	}
	key, err := optString(body, "ssh_key")
	if err != nil || key == nil || !looksLikeSSHKey(*key) {
		writeErr(c.w, http.StatusBadRequest, "invalid_args", "Invalid SSH key.")
		return
	}
	s.mu.Lock()
	in := s.lookupLocked(id, time.Now())
	if in == nil || in.destroyed() {
		s.mu.Unlock()
		writeErr(c.w, http.StatusNotFound, "no_such_instance", fmt.Sprintf("Instance %s not found.", c.ids[0]))
		return
	}
	s.nextKeyID++
	f := strings.Fields(*key)
	name := ""
	if len(f) > 2 {
		name = strings.Join(f[2:], " ")
	}
	in.sshKeys = append(in.sshKeys, sshKeyRec{ID: s.nextKeyID, Name: name, PublicKey: strings.TrimSpace(*key)})
	s.mu.Unlock()
	writeJSON(c.w, http.StatusOK, map[string]any{"success": true, "msg": "SSH key attached successfully"})
}

func looksLikeSSHKey(k string) bool {
	f := strings.Fields(k)
	return len(f) >= 2 && (strings.HasPrefix(f[0], "ssh-") || strings.HasPrefix(f[0], "ecdsa-") || strings.HasPrefix(f[0], "sk-"))
}

// handleSSHList serves GET /api/v0/instances/{id}/ssh/; ssh_keys is a
// JSON-encoded string, as on vast.ai, so clients must decode twice.
func (s *Sim) handleSSHList(c *call) {
	id, _ := parseID(c.ids[0])
	s.mu.Lock()
	in := s.lookupLocked(id, time.Now())
	if in == nil || in.destroyed() {
		s.mu.Unlock()
		writeErr(c.w, http.StatusNotFound, "no_such_instance", fmt.Sprintf("Instance %s not found.", c.ids[0]))
		return
	}
	keys := append([]sshKeyRec{}, in.sshKeys...)
	s.mu.Unlock()
	enc, _ := json.Marshal(keys)
	writeJSON(c.w, http.StatusOK, map[string]any{"success": true, "ssh_keys": string(enc)})
}

// handleSSHDetach serves DELETE /api/v0/instances/{id}/ssh/{key}/.
func (s *Sim) handleSSHDetach(c *call) {
	id, _ := parseID(c.ids[0])
	keyID, _ := parseID(c.ids[1])
	s.mu.Lock()
	in := s.lookupLocked(id, time.Now())
	if in == nil || in.destroyed() {
		s.mu.Unlock()
		writeErr(c.w, http.StatusNotFound, "no_such_instance", fmt.Sprintf("Instance %s not found.", c.ids[0]))
		return
	}
	i := slices.IndexFunc(in.sshKeys, func(k sshKeyRec) bool { return k.ID == keyID })
	if i < 0 {
		s.mu.Unlock()
		writeErr(c.w, http.StatusNotFound, "no_such_ssh_key", fmt.Sprintf("SSH key %s not found.", c.ids[1]))
		return
	}
	in.sshKeys = slices.Delete(in.sshKeys, i, i+1)
	s.mu.Unlock()
	writeJSON(c.w, http.StatusOK, map[string]any{"success": true, "msg": "SSH key removed from instance."})
}

// handleUser serves GET /api/v0/users/current/.
func (s *Sim) handleUser(c *call) {
	writeJSON(c.w, http.StatusOK, map[string]any{
		"id":             271828,
		"username":       "vastsim",
		"email":          "vastsim@example.invalid",
		"fullname":       "Vast Simulator",
		"credit":         s.opts.Credit,
		"balance":        0.0,
		"ssh_key":        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZhc3RzaW0tYWNjb3VudC1rZXktcGxhY2Vob2xkZXI vastsim",
		"has_billing":    true,
		"can_pay":        true,
		"email_verified": true,
		"is_verified":    true,
		"sid":            nil,
	})
}

// handleBundles serves the offer search, POST with a JSON body or GET with
// ?q=<json> (both are used by real clients).
func (s *Sim) handleBundles(c *call) {
	var raw []byte
	if c.r.Method == http.MethodGet {
		raw = []byte(c.r.URL.Query().Get("q"))
	} else {
		b, err := io.ReadAll(io.LimitReader(c.r.Body, 1<<20))
		if err != nil {
			writeErr(c.w, http.StatusBadRequest, "bad_request", "could not read body")
			return
		}
		raw = b
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		raw = []byte("{}")
	}
	var query map[string]any
	if err := decodeJSON(raw, &query); err != nil || query == nil {
		writeErr(c.w, http.StatusBadRequest, "bad_request", "q: Input should be a valid dictionary")
		return
	}
	// Some clients wrap the query as {"q": {...}} (the CLI's search/asks).
	if inner, ok := query["q"].(map[string]any); ok && len(query) <= 2 {
		query = inner
	}

	fields := make([]string, 0, len(query))
	for k := range query {
		fields = append(fields, k)
	}
	sort.Strings(fields)
	var problems []string
	var conds []cond
	for _, f := range fields {
		if offerNonFilterKeys[f] {
			continue
		}
		ops, ok := query[f].(map[string]any)
		if !ok {
			problems = append(problems, fmt.Sprintf("q.%s: Input should be a valid dictionary", f))
			continue
		}
		for op, v := range ops {
			cop, ok := canonicalOp(op)
			if !ok {
				problems = append(problems, fmt.Sprintf("q.%s.%s: Extra inputs are not permitted", f, op))
				continue
			}
			conds = append(conds, cond{field: f, op: cop, val: v})
		}
	}
	if t, ok := query["type"]; ok {
		ts, _ := t.(string)
		switch strings.ToLower(ts) {
		case "on-demand", "ondemand", "on_demand", "bid", "interruptible", "reserved":
		default:
			problems = append(problems, "q.type: Input should be 'on-demand', 'bid' or 'reserved'")
		}
	}
	if len(problems) > 0 {
		writeErr(c.w, http.StatusBadRequest, "bad_request", strings.Join(problems, "; "))
		return
	}
	limit := 64
	if v, ok := numeric(query["limit"]); ok && v > 0 {
		limit = int(v)
	}
	allocated := 5.0
	if v, ok := numeric(query["allocated_storage"]); ok && v > 0 {
		allocated = v
	}
	keys := []sortKey{{Col: "score", Desc: true}}
	if order, ok := query["order"].([]any); ok {
		keys = nil
		for _, it := range order {
			pair, _ := it.([]any)
			if len(pair) == 0 {
				continue
			}
			col, _ := pair[0].(string)
			dir := ""
			if len(pair) > 1 {
				dir, _ = pair[1].(string)
			}
			if col != "" {
				keys = append(keys, sortKey{Col: col, Desc: strings.EqualFold(dir, "desc")})
			}
		}
	}

	s.mu.Lock()
	now := time.Now()
	var rows []map[string]any
	for _, o := range s.offers {
		if !s.offerFreeLocked(o, now) {
			continue
		}
		m := offerJSON(o.Offer, allocated, now)
		keep := true
		for _, cd := range conds {
			if !offerMatch(o.Offer, m, cd) {
				keep = false
				break
			}
		}
		if keep {
			rows = append(rows, m)
		}
	}
	s.mu.Unlock()
	sortRows(rows, keys, "id")
	if len(rows) > limit {
		rows = rows[:limit]
	}
	out := make([]any, 0, len(rows))
	for _, m := range rows {
		out = append(out, m)
	}
	writeJSON(c.w, http.StatusOK, map[string]any{"offers": out})
}

// offerMatch applies one filter to an offer. geolocation matches the
// two-letter country code (or the full text); verified is the boolean form
// of verification that the CLI's default query uses.
func offerMatch(o Offer, m map[string]any, cd cond) bool {
	switch cd.field {
	case "geolocation":
		cc := countryCode(o.Geolocation)
		if cd.op == "neq" || cd.op == "notin" {
			return matchCond(cc, cd.op, cd.val) && matchCond(o.Geolocation, cd.op, cd.val)
		}
		return matchCond(cc, cd.op, cd.val) || matchCond(o.Geolocation, cd.op, cd.val)
	case "verified":
		return matchCond(o.Verified, cd.op, cd.val)
	}
	return matchCond(m[cd.field], cd.op, cd.val)
}

// parseEnvObject decodes the create body's env, keeping key order, and
// requires a JSON object of strings.
func parseEnvObject(raw json.RawMessage) ([]kv, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, errors.New("'env' must be a JSON object mapping names to string values")
	}
	var out []kv
	seen := map[string]int{}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, errors.New("'env' is not valid JSON")
		}
		k, _ := kt.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			return nil, errors.New("'env' is not valid JSON")
		}
		sv, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("'env' value for %q must be a string", k)
		}
		if i, dup := seen[k]; dup {
			out[i].V = sv
			continue
		}
		seen[k] = len(out)
		out = append(out, kv{K: k, V: sv})
	}
	return out, nil
}

// handleCreate serves PUT /api/v0/asks/{offer_id}/ (§8).
func (s *Sim) handleCreate(c *call) {
	invalid := func(msg string) {
		writeErr(c.w, http.StatusBadRequest, "invalid_args", "error 400/3467: Invalid args: "+msg)
	}
	offerID, ok := parseID(c.ids[0])
	if !ok {
		invalid("'id' is required and must be a valid offer ID")
		return
	}
	body, err := readObject(c.r)
	if err != nil {
		invalid(err.Error())
		return
	}
	var env []kv
	if raw, present := body["env"]; present {
		if env, err = parseEnvObject(raw); err != nil {
			invalid(err.Error())
			return
		}
	}
	totalEnv := 0
	for _, e := range env {
		if len(e.V) > 256 {
			invalid(fmt.Sprintf("env value for %q exceeds 256 characters", e.K))
			return
		}
		totalEnv += len(e.K) + len(e.V)
	}
	if totalEnv > 32768 {
		invalid("env exceeds 32768 characters in total")
		return
	}
	str := map[string]*string{}
	for _, k := range []string{"image", "label", "onstart", "runtype", "template_hash_id", "target_state", "args_str"} {
		v, err := optString(body, k)
		if err != nil {
			invalid(err.Error())
			return
		}
		str[k] = v
	}
	_, hasTemplateID := body["template_id"]
	if (str["image"] == nil || *str["image"] == "") && str["template_hash_id"] == nil && !hasTemplateID {
		invalid("'image' is required when no template is given")
		return
	}
	if str["image"] != nil && len(*str["image"]) > 1024 {
		invalid("'image' exceeds 1024 characters")
		return
	}
	if str["label"] != nil && len(*str["label"]) > 256 {
		invalid("'label' exceeds 256 characters")
		return
	}
	if ts := str["target_state"]; ts != nil && *ts != "running" && *ts != "stopped" {
		invalid("'target_state' must be \"running\" or \"stopped\"")
		return
	}
	disk := 8.0
	if raw, ok := body["disk"]; ok && !isNull(raw) {
		if json.Unmarshal(raw, &disk) != nil || disk < 8 {
			invalid("'disk' must be a number of GB, at least 8")
			return
		}
	}
	var price *float64
	if raw, ok := body["price"]; ok && !isNull(raw) {
		var p float64
		if json.Unmarshal(raw, &p) != nil || p < 0.001 || p > 128 {
			writeErr(c.w, http.StatusBadRequest, "invalid_price", "error 400/3468: Invalid price: must be between 0.001 and 128 $/hour")
			return
		}
		price = &p
	}
	var args []string
	if raw, ok := body["args"]; ok && !isNull(raw) {
		if json.Unmarshal(raw, &args) != nil {
			invalid("'args' must be a list of strings")
			return
		}
	}
	if a := str["args_str"]; a != nil && len(args) == 0 {
		args = strings.Fields(*a)
	}
	ports := parsePortKeys(env)
	if !slices.ContainsFunc(ports, func(p portSpec) bool { return p.proto == "tcp" }) {
		ports = append(ports, portSpec{port: 8000, proto: "tcp"})
	}
	if len(ports) > 64 {
		invalid("at most 64 ports can be opened")
		return
	}
	wantRunning := str["target_state"] == nil || *str["target_state"] == "running"
	cancel, err := cancelUnavail(body, price != nil, wantRunning)
	if err != nil {
		invalid(err.Error())
		return
	}

	s.mu.Lock()
	now := time.Now()
	s.scheduleLocked(now)
	offer := s.findOfferLocked(offerID)
	waiting := offer != nil && s.offerUnavailLocked(offer, now)
	if waiting && cancel {
		s.mu.Unlock()
		createUnavailable(c, offerID)
		return
	}
	if offer == nil || (!waiting && !s.offerFreeLocked(offer, now)) {
		s.mu.Unlock()
		// Observed in practice: HTTP 400 wrapping the 404 code, with a
		// double space after no_such_ask.
		writeJSON(c.w, http.StatusBadRequest, map[string]any{
			"success": false, "error": "invalid_args",
			"msg":    fmt.Sprintf("error 404/3603: no_such_ask  Instance type by id %d is not available.", offerID),
			"ask_id": offerID,
		})
		return
	}
	in := s.newInstanceLocked(offer.Offer, now)
	in.offerID = offer.ID
	if l := str["label"]; l != nil && *l != "" {
		v := *l
		in.label = &v
	}
	if str["image"] != nil {
		in.image = *str["image"]
	} else {
		in.image = "vastai/vllm:latest"
	}
	rt := ""
	if str["runtype"] != nil {
		rt = *str["runtype"]
	}
	in.runtype = runtypeFlags(rt)
	in.onstart = str["onstart"]
	in.templateHashID = str["template_hash_id"]
	in.env = env
	in.args = args
	in.model = modelFromEnv(env)
	in.diskGB = disk
	if price != nil {
		in.isBid = true
		in.dphBase = *price
	}
	in.ports = ports
	in.nullUntil = now.Add(s.opts.LoadingDelay / 4)
	in.runningAt = now.Add(s.opts.LoadingDelay)
	if !wantRunning {
		in.stopped = true
		in.intended = "stopped"
	} else if waiting {
		// cancel_unavail false: created stopped, waiting for the GPU.
		in.stopped, in.scheduling = true, true
	}
	s.instances[in.id] = in
	if !in.stopped {
		if err := s.startEngineLocked(in, false); err != nil {
			s.logf("vastsim: instance %d: %v", in.id, err)
		}
	}
	s.mu.Unlock()
	s.logf("vastsim: created instance %d from offer %d (%s)", in.id, offerID, in.offer.GPUName)

	writeJSON(c.w, http.StatusOK, map[string]any{
		"success":          !c.fault.CreateSuccessFalse,
		"new_contract":     in.id,
		"instance_api_key": in.apiKey,
	})
}
