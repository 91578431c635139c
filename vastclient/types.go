package vastclient

import (
	"bytes"
	"encoding/json"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"
)

// Instance is one vast.ai instance (a "contract"), as returned by the v1 list
// and the v0 show endpoints.
//
// The real API may send null for any key, numbers as strings, ports as an
// object or (in a documentation bug) a list, and extra_env as a list of pairs
// or an object. Decoding is therefore done field by field: a malformed field
// is left at its zero value instead of failing the whole instance, so one odd
// row never blinds the watcher. Only a missing or invalid id makes a row
// unusable (see Valid).
type Instance struct {
	ID             int64  `json:"id"`
	ActualStatus   string `json:"actual_status"`
	IntendedStatus string `json:"intended_status"`
	CurState       string `json:"cur_state"`
	NextState      string `json:"next_state"`
	StatusMsg      string `json:"status_msg"`
	Label          string `json:"label"`

	ImageUUID      string   `json:"image_uuid"`
	ImageRuntype   string   `json:"image_runtype"`
	TemplateHashID string   `json:"template_hash_id"`
	ExtraEnv       Env      `json:"extra_env"`
	Onstart        string   `json:"onstart"`
	ImageArgs      []string `json:"image_args"`

	// JupyterToken is a secret: never log it or return it from an API.
	JupyterToken string `json:"-"`

	PublicIPAddr string `json:"public_ipaddr"`
	Ports        Ports  `json:"ports"`
	SSHHost      string `json:"ssh_host"`
	SSHPort      int    `json:"ssh_port"`

	MachineID int64 `json:"machine_id"`
	HostID    int64 `json:"host_id"`

	NumGPUs     int      `json:"num_gpus"`
	GPUName     string   `json:"gpu_name"`
	GPURAM      float64  `json:"gpu_ram"`
	GPUUtil     *float64 `json:"gpu_util"`
	GPUTemp     *float64 `json:"gpu_temp"`
	DiskSpace   float64  `json:"disk_space"`
	Geolocation string   `json:"geolocation"`

	DPHTotal         float64 `json:"dph_total"`
	StorageTotalCost float64 `json:"storage_total_cost"`
	IsBid            bool    `json:"is_bid"`
	StartDate        float64 `json:"start_date"`
	EndDate          float64 `json:"end_date"`
	Reliability2     float64 `json:"reliability2"`
}

// Valid reports whether the row carried a usable instance id.
func (in *Instance) Valid() bool { return in.ID > 0 }

// UnmarshalJSON decodes an instance tolerantly. It fails only when the value
// is not a JSON object at all.
func (in *Instance) UnmarshalJSON(b []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*in = Instance{
		ID:               flexInt(m["id"]),
		ActualStatus:     flexString(m["actual_status"]),
		IntendedStatus:   flexString(m["intended_status"]),
		CurState:         flexString(m["cur_state"]),
		NextState:        flexString(m["next_state"]),
		StatusMsg:        flexString(m["status_msg"]),
		Label:            flexString(m["label"]),
		ImageUUID:        flexString(m["image_uuid"]),
		ImageRuntype:     flexString(m["image_runtype"]),
		TemplateHashID:   flexString(m["template_hash_id"]),
		Onstart:          flexString(m["onstart"]),
		JupyterToken:     flexString(m["jupyter_token"]),
		PublicIPAddr:     flexString(m["public_ipaddr"]),
		SSHHost:          flexString(m["ssh_host"]),
		SSHPort:          int(flexInt(m["ssh_port"])),
		MachineID:        flexInt(m["machine_id"]),
		HostID:           flexInt(m["host_id"]),
		NumGPUs:          int(flexInt(m["num_gpus"])),
		GPUName:          flexString(m["gpu_name"]),
		GPURAM:           flexFloat(m["gpu_ram"]),
		GPUUtil:          flexFloatPtr(m["gpu_util"]),
		GPUTemp:          flexFloatPtr(m["gpu_temp"]),
		DiskSpace:        flexFloat(m["disk_space"]),
		Geolocation:      flexString(m["geolocation"]),
		DPHTotal:         flexFloat(m["dph_total"]),
		StorageTotalCost: flexFloat(m["storage_total_cost"]),
		IsBid:            flexBool(m["is_bid"]),
		StartDate:        flexFloat(m["start_date"]),
		EndDate:          flexFloat(m["end_date"]),
		Reliability2:     flexFloat(m["reliability2"]),
	}
	if raw, ok := m["image_args"]; ok {
		var args []string
		if json.Unmarshal(raw, &args) == nil {
			in.ImageArgs = args
		}
	}
	if raw, ok := m["extra_env"]; ok {
		_ = in.ExtraEnv.UnmarshalJSON(raw) // tolerant: never fails
	}
	if raw, ok := m["ports"]; ok {
		_ = in.Ports.UnmarshalJSON(raw) // tolerant: never fails
	}
	return nil
}

// PortBinding is one host binding of a container port.
type PortBinding struct {
	HostIP   string `json:"HostIp"`
	HostPort string `json:"HostPort"`
}

// Ports maps "<container port>/<proto>" to its host bindings (one per
// address family in real payloads).
type Ports map[string][]PortBinding

// UnmarshalJSON accepts the real object form (HostPort as a string or a
// number), and treats null, the documentation's list form ([8080, 8081]) and
// anything else as "no ports". It never returns an error.
func (p *Ports) UnmarshalJSON(b []byte) error {
	*p = nil
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	out := make(Ports, len(m))
	for key, raw := range m {
		var entries []map[string]json.RawMessage
		if json.Unmarshal(raw, &entries) != nil {
			continue
		}
		for _, e := range entries {
			out[key] = append(out[key], PortBinding{
				HostIP:   flexString(e["HostIp"]),
				HostPort: flexNumberString(e["HostPort"]),
			})
		}
	}
	*p = out
	return nil
}

// HostPort returns the host port mapped to the container port (for example
// 8000 and "tcp"). It takes the first binding with a valid port, preferring
// an IPv4 binding, and never assumes index 0 is IPv4.
func (p Ports) HostPort(containerPort int, proto string) (int, bool) {
	if proto == "" {
		proto = "tcp"
	}
	bindings := p[strconv.Itoa(containerPort)+"/"+proto]
	best := 0
	for _, b := range bindings {
		port, err := strconv.Atoi(strings.TrimSpace(b.HostPort))
		if err != nil || port <= 0 || port > 65535 {
			continue
		}
		ip := net.ParseIP(b.HostIP)
		if b.HostIP == "" || (ip != nil && ip.To4() != nil) {
			return port, true
		}
		if best == 0 {
			best = port
		}
	}
	return best, best != 0
}

// Env is an instance's extra_env: environment variables, plus Docker options
// such as "-p 8000:8000" whose keys start with "-".
type Env map[string]string

// UnmarshalJSON accepts a list of [key, value] pairs (the real API), an
// object of strings (the CLI's rendering), or null. Entries with fewer than
// two elements or an empty key are skipped. It never returns an error.
func (e *Env) UnmarshalJSON(b []byte) error {
	*e = nil
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil
	}
	out := Env{}
	switch b[0] {
	case '{':
		var m map[string]json.RawMessage
		if json.Unmarshal(b, &m) != nil {
			return nil
		}
		for k, v := range m {
			if k != "" {
				out[k] = flexNumberString(v)
			}
		}
	case '[':
		var pairs []json.RawMessage
		if json.Unmarshal(b, &pairs) != nil {
			return nil
		}
		for _, raw := range pairs {
			var pair []json.RawMessage
			if json.Unmarshal(raw, &pair) != nil || len(pair) < 2 {
				continue
			}
			k := flexString(pair[0])
			if k == "" {
				continue
			}
			out[k] = flexNumberString(pair[1])
		}
	default:
		return nil
	}
	*e = out
	return nil
}

// Vars returns the real environment variables (not Docker options), sorted
// by name.
func (e Env) Vars() []string {
	names := make([]string, 0, len(e))
	for k := range e {
		if !strings.HasPrefix(k, "-") {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	return names
}

func flexString(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return strings.TrimSpace(s)
	}
	return ""
}

// flexNumberString reads a string, or a number rendered as its decimal text.
func flexNumberString(raw json.RawMessage) string {
	if s := flexString(raw); s != "" {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	return ""
}

func flexFloatOK(raw json.RawMessage) (float64, bool) {
	// Unmarshalling null into a float succeeds and leaves 0, which would
	// turn "gpu_util": null into a reading of 0 %.
	if t := bytes.TrimSpace(raw); len(t) == 0 || string(t) == "null" {
		return 0, false
	}
	var f float64
	if json.Unmarshal(raw, &f) == nil {
		return f, !math.IsNaN(f) && !math.IsInf(f, 0)
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
			return f, true
		}
	}
	return 0, false
}

func flexFloat(raw json.RawMessage) float64 {
	f, _ := flexFloatOK(raw)
	return f
}

func flexFloatPtr(raw json.RawMessage) *float64 {
	if f, ok := flexFloatOK(raw); ok {
		return &f
	}
	return nil
}

func flexInt(raw json.RawMessage) int64 {
	f, ok := flexFloatOK(raw)
	if !ok || f != math.Trunc(f) || f > math.MaxInt64/2 || f < math.MinInt64/2 {
		return 0
	}
	return int64(f)
}

func flexBool(raw json.RawMessage) bool {
	var b bool
	if json.Unmarshal(raw, &b) == nil {
		return b
	}
	return flexInt(raw) != 0
}
