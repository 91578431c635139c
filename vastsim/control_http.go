package vastsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ControlPrefix is where the simulator serves its fault controls over HTTP,
// next to the API: a demo (or a person with curl) can make an engine hang
// or fail, an instance exit, the API fail or rate-limit, and recover. The
// controls bypass the API's faults, authentication and rate limits: the
// simulator is a local test tool.
//
//	GET    /_sim/                          this list
//	GET    /_sim/instances                 instances with their billing
//	POST   /_sim/instances                 launch {"label":"llm-4","dph":0.4}
//	DELETE /_sim/instances/{id}            destroyed behind the gateway's back
//	POST   /_sim/instances/{id}/hang       engine accepts and never answers
//	POST   /_sim/instances/{id}/kill       engine refuses connections, API says running
//	POST   /_sim/instances/{id}/unready    engine answers the 502 portal placeholder
//	POST   /_sim/instances/{id}/exit       actual_status "exited" (container died)
//	POST   /_sim/instances/{id}/status     {"status":"offline"} (any actual_status)
//	POST   /_sim/instances/{id}/recover    running, answering, not hung
//	POST   /_sim/machines/{id}/rent        someone else rents the machine's GPU
//	POST   /_sim/machines/{id}/release     the machine's GPU is free again
//	GET    /_sim/faults                    the API faults in force
//	PUT    /_sim/faults                    {"status":500} {"rate_limit":true} {"latency":"3s"} ...
//	DELETE /_sim/faults                    the API recovers
const ControlPrefix = "/_sim/"

// controlHelp lists the control endpoints (GET /_sim/).
var controlHelp = []string{
	"GET    /_sim/instances",
	"POST   /_sim/instances {\"label\":\"llm-4\",\"dph\":0.4,\"running\":true,\"machine_id\":47123}",
	"DELETE /_sim/instances/{id}",
	"POST   /_sim/instances/{id}/hang|kill|unready|exit|recover",
	"POST   /_sim/instances/{id}/status {\"status\":\"offline\"}",
	"POST   /_sim/machines/{id}/rent|release",
	"GET    /_sim/faults",
	"PUT    /_sim/faults {\"status\":500,\"rate_limit\":false,\"latency\":\"0s\",\"malformed_json\":false,\"empty_body\":false,\"omit_from_list\":[],\"count\":0,\"routes\":[]}",
	"DELETE /_sim/faults",
}

// controlInstance is an instance as GET /_sim/instances shows it. The
// engine token is left out: it is a secret even in a simulator's output.
type controlInstance struct {
	ID           int64          `json:"id"`
	Label        string         `json:"label"`
	ActualStatus string         `json:"actual_status"`
	Destroyed    bool           `json:"destroyed"`
	Gone         bool           `json:"gone"`
	EngineAddr   string         `json:"engine_addr,omitempty"`
	EngineUp     bool           `json:"engine_up"`
	MachineID    int64          `json:"machine_id"`
	Ports        map[string]int `json:"ports"`
	Billing      controlBilling `json:"billing"`
}

type controlBilling struct {
	Dollars       float64 `json:"dollars"`
	BilledSeconds float64 `json:"billed_seconds"`
	RatePerHour   float64 `json:"rate_per_hour"`
}

// faultsJSON is the wire form of Faults, with durations as Go strings.
type faultsJSON struct {
	Status             int      `json:"status"`
	RateLimit          bool     `json:"rate_limit"`
	Latency            string   `json:"latency,omitempty"`
	MalformedJSON      bool     `json:"malformed_json"`
	EmptyBody          bool     `json:"empty_body"`
	OmitFromList       []int64  `json:"omit_from_list"`
	Count              int      `json:"count"`
	CreateSuccessFalse bool     `json:"create_success_false"`
	SlowResponse       string   `json:"slow_response,omitempty"`
	Routes             []string `json:"routes"`
}

func (f faultsJSON) faults() (Faults, error) {
	out := Faults{Status: f.Status, RateLimit: f.RateLimit, MalformedJSON: f.MalformedJSON, EmptyBody: f.EmptyBody,
		OmitFromList: f.OmitFromList, Count: f.Count, CreateSuccessFalse: f.CreateSuccessFalse, Routes: f.Routes}
	if f.Status != 0 && (f.Status < 100 || f.Status > 599) {
		return Faults{}, fmt.Errorf("status: %d is not an HTTP status", f.Status)
	}
	if f.Count < 0 {
		return Faults{}, fmt.Errorf("count: must not be negative, got %d", f.Count)
	}
	for _, d := range []struct {
		name string
		raw  string
		dst  *time.Duration
	}{{"latency", f.Latency, &out.Latency}, {"slow_response", f.SlowResponse, &out.SlowResponse}} {
		if d.raw == "" {
			continue
		}
		v, err := time.ParseDuration(d.raw)
		if err != nil || v < 0 {
			return Faults{}, fmt.Errorf("%s: %q is not a duration such as \"2s\"", d.name, d.raw)
		}
		*d.dst = v
	}
	return out, nil
}

func toFaultsJSON(f Faults) faultsJSON {
	out := faultsJSON{Status: f.Status, RateLimit: f.RateLimit, MalformedJSON: f.MalformedJSON, EmptyBody: f.EmptyBody,
		OmitFromList: f.OmitFromList, Count: f.Count, CreateSuccessFalse: f.CreateSuccessFalse, Routes: f.Routes}
	if f.Latency > 0 {
		out.Latency = f.Latency.String()
	}
	if f.SlowResponse > 0 {
		out.SlowResponse = f.SlowResponse.String()
	}
	return out
}

// errControl is a control request the simulator refuses, with its status.
type errControl struct {
	status int
	msg    string
}

func (e *errControl) Error() string { return e.msg }

func controlErr(status int, format string, args ...any) error {
	return &errControl{status: status, msg: fmt.Sprintf(format, args...)}
}

// serveControl answers the /_sim/ endpoints.
func (s *Sim) serveControl(w http.ResponseWriter, r *http.Request) {
	out, err := s.control(r)
	if err != nil {
		status := http.StatusBadRequest
		var ce *errControl
		if errors.As(err, &ce) {
			status = ce.status
		}
		writeJSON(w, status, map[string]any{"success": false, "error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Sim) control(r *http.Request) (any, error) {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, ControlPrefix), "/"), "/")
	method := func(allowed ...string) error {
		for _, m := range allowed {
			if r.Method == m {
				return nil
			}
		}
		return controlErr(http.StatusMethodNotAllowed, "method %s not allowed on %s; use %s", r.Method, r.URL.Path, strings.Join(allowed, " or "))
	}
	switch {
	case len(parts) == 1 && parts[0] == "":
		return map[string]any{"endpoints": controlHelp}, method(http.MethodGet)
	case len(parts) == 1 && parts[0] == "faults":
		return s.controlFaults(r, method)
	case len(parts) == 3 && parts[0] == "machines":
		return s.controlMachine(parts[1], parts[2], method)
	case len(parts) == 1 && parts[0] == "instances":
		if err := method(http.MethodGet, http.MethodPost); err != nil {
			return nil, err
		}
		if r.Method == http.MethodPost {
			return s.controlLaunch(r)
		}
		return s.controlInstances(), nil
	case len(parts) >= 2 && len(parts) <= 3 && parts[0] == "instances":
		id, err := strconv.ParseInt(parts[1], 10, 64)
		if err != nil || id <= 0 {
			return nil, controlErr(http.StatusBadRequest, "instance id %q is not a positive integer", parts[1])
		}
		if _, ok := s.Billing(id); !ok {
			return nil, controlErr(http.StatusNotFound, "instance %d is not known", id)
		}
		if len(parts) == 2 {
			if err := method(http.MethodGet, http.MethodDelete); err != nil {
				return nil, err
			}
			if r.Method == http.MethodDelete {
				s.Remove(id)
			}
			return s.controlInstance(id), nil
		}
		if err := method(http.MethodPost); err != nil {
			return nil, err
		}
		if err := s.controlAction(r, id, parts[2]); err != nil {
			return nil, err
		}
		return s.controlInstance(id), nil
	}
	return nil, controlErr(http.StatusNotFound, "no such control endpoint: %s %s (GET %s lists them)", r.Method, r.URL.Path, ControlPrefix)
}

func (s *Sim) controlFaults(r *http.Request, method func(...string) error) (any, error) {
	if err := method(http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete); err != nil {
		return nil, err
	}
	switch r.Method {
	case http.MethodDelete:
		s.SetFaults(Faults{})
	case http.MethodPut, http.MethodPost:
		var fj faultsJSON
		if err := decodeStrict(r, &fj); err != nil {
			return nil, err
		}
		f, err := fj.faults()
		if err != nil {
			return nil, err
		}
		s.SetFaults(f)
	}
	return toFaultsJSON(s.CurrentFaults()), nil
}

func (s *Sim) controlAction(r *http.Request, id int64, action string) error {
	switch action {
	case "hang":
		s.HangEngine(id, true)
	case "unhang":
		s.HangEngine(id, false)
	case "kill":
		s.KillEngine(id)
	case "unready":
		s.SetEngineReady(id, false)
	case "ready":
		s.SetEngineReady(id, true)
	case "exit":
		s.SetStatus(id, "exited")
	case "status":
		var body struct {
			Status string `json:"status"`
		}
		if err := decodeStrict(r, &body); err != nil {
			return err
		}
		s.SetStatus(id, body.Status)
	case "recover":
		s.HangEngine(id, false)
		s.SetEngineReady(id, true)
		s.SetStatus(id, "running")
	default:
		return controlErr(http.StatusNotFound, "no such instance action %q (hang, unhang, kill, unready, ready, exit, status, recover)", action)
	}
	return nil
}

func (s *Sim) controlLaunch(r *http.Request) (any, error) {
	var body struct {
		Label   string  `json:"label"`
		GPUName string  `json:"gpu_name"`
		NumGPUs int     `json:"num_gpus"`
		DPH     float64 `json:"dph"`
		Running *bool   `json:"running"`
		// MachineID puts the instance on a machine that /_sim/machines
		// can rent out; 0 picks a synthetic one.
		MachineID int64 `json:"machine_id"`
	}
	if err := decodeStrict(r, &body); err != nil {
		return nil, err
	}
	if body.DPH < 0 {
		return nil, controlErr(http.StatusBadRequest, "dph: must not be negative")
	}
	if body.NumGPUs < 0 {
		return nil, controlErr(http.StatusBadRequest, "num_gpus: must not be negative")
	}
	running := body.Running == nil || *body.Running
	if body.MachineID < 0 {
		return nil, controlErr(http.StatusBadRequest, "machine_id: must not be negative")
	}
	id, err := s.Launch(LaunchSpec{Label: body.Label, GPUName: body.GPUName, NumGPUs: body.NumGPUs, DPH: body.DPH, Running: running, MachineID: body.MachineID})
	if err != nil {
		return nil, controlErr(http.StatusConflict, "%v", err)
	}
	return s.controlInstance(id), nil
}

func (s *Sim) controlInstances() []controlInstance {
	infos := s.Instances()
	out := make([]controlInstance, 0, len(infos))
	for _, in := range infos {
		out = append(out, s.controlView(in))
	}
	return out
}

func (s *Sim) controlInstance(id int64) controlInstance {
	for _, in := range s.Instances() {
		if in.ID == id {
			return s.controlView(in)
		}
	}
	return controlInstance{ID: id}
}

func (s *Sim) controlView(in InstanceInfo) controlInstance {
	v := controlInstance{ID: in.ID, Label: in.Label, ActualStatus: in.ActualStatus, Destroyed: in.Destroyed, Gone: in.Gone,
		EngineAddr: in.EngineAddr, EngineUp: in.EngineUp, MachineID: in.MachineID, Ports: in.Ports}
	if b, ok := s.Billing(in.ID); ok {
		v.Billing = controlBilling{Dollars: b.Dollars, BilledSeconds: b.BilledSeconds, RatePerHour: b.RatePerHour}
	}
	return v
}

// decodeStrict reads a JSON body (empty means {}), naming an unknown or
// mistyped field.
func decodeStrict(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	var te *json.UnmarshalTypeError
	switch {
	case err == nil || errors.Is(err, io.EOF):
		return nil
	case errors.As(err, &te):
		return controlErr(http.StatusBadRequest, "%s: wrong type, got a JSON %s", te.Field, te.Value)
	}
	return controlErr(http.StatusBadRequest, "request body: %v", err)
}
