package vastsim

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// The commands an instance's SSH server answers: nvidia-smi (the GPU
// metrics a gateway collects), echo, and "command not found" for the rest.

// runCommand runs one exec request and returns stdout, stderr and the exit
// status.
func (s *Sim) runCommand(in *instance, p sshPath, cmd string) (string, string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.sshStateLocked(in)
	st.stats.path(p).Execs++
	st.stats.LastCommand = cmd

	words := shellWords(cmd)
	switch {
	case len(words) > 0 && words[0] == "echo":
		args := words[1:]
		nl := "\n"
		if len(args) > 0 && args[0] == "-n" {
			args, nl = args[1:], ""
		}
		return strings.Join(args, " ") + nl, "", 0
	case strings.Contains(cmd, "nvidia-smi"):
		if st.smiForced {
			return st.smiOut, "", st.smiExit
		}
		for _, w := range words {
			// bash -c 'nvidia-smi ...': look inside the quoted script.
			if strings.Contains(w, "nvidia-smi") && strings.ContainsAny(w, " \t") {
				words = shellWords(w)
				break
			}
		}
		return s.nvidiaSMILocked(in, words, time.Now())
	case len(words) > 0 && (words[0] == "true" || words[0] == ":"):
		return "", "", 0
	case len(words) == 0:
		return "", "", 0
	}
	return "", "bash: line 1: " + words[0] + ": command not found\n", 127
}

// shellWords splits a command line the way a shell would for simple
// commands: whitespace separates words, single and double quotes group,
// and a backslash escapes the next character outside single quotes.
func shellWords(cmd string) []string {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	escaped := false
	for _, r := range cmd {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case quote != 0:
			switch {
			case r == quote:
				quote = 0
			case r == '\\' && quote == '"':
				escaped = true
			default:
				cur.WriteRune(r)
			}
		case r == '\\':
			escaped, inWord = true, true
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// gpuSim is the slowly varying state of one simulated GPU.
type gpuSim struct {
	temp      float64
	at        time.Time
	lastPower float64
}

// gpuReading is one GPU's figures at one nvidia-smi call.
type gpuReading struct {
	index            int
	uuid, name, bus  string
	driver           string
	util, memUtil    int
	memUsed, memTot  int
	temp, fan        int
	datacenter       bool
	power, powerCap  float64
	pstate           string
	computeCapString string
}

// smiName renders vast.ai's gpu_name the way the driver names the board.
func smiName(gpu string, ramMB int) string {
	up := strings.ToUpper(gpu)
	switch {
	case strings.HasPrefix(up, "A100"):
		form := "PCIE"
		if strings.Contains(up, "SXM") || strings.Contains(up, "80GB") {
			form = "SXM4"
		}
		return fmt.Sprintf("NVIDIA A100-%s-%dGB", form, (ramMB+1023)/1024)
	case strings.HasPrefix(up, "H100"):
		if strings.Contains(up, "PCIE") {
			return "NVIDIA H100 PCIe"
		}
		return "NVIDIA H100 80GB HBM3"
	case strings.HasPrefix(up, "RTX A"), strings.HasPrefix(up, "RTX 6000"), strings.HasPrefix(up, "RTX PRO"):
		return "NVIDIA " + gpu
	case strings.HasPrefix(up, "RTX "), strings.HasPrefix(up, "GTX "):
		return "NVIDIA GeForce " + gpu
	}
	return "NVIDIA " + gpu
}

// powerLimit is the board power limit in watts.
func powerLimit(gpu string) float64 {
	up := strings.ToUpper(gpu)
	for _, c := range []struct {
		sub string
		w   float64
	}{
		{"5090", 575}, {"4090", 450}, {"3090", 350}, {"4080", 320}, {"3080", 320},
		{"A100 SXM", 400}, {"A100 80GB", 400}, {"A100", 250}, {"H100 PCIE", 350}, {"H100", 700},
		{"A6000", 300}, {"A5000", 230}, {"L40", 300}, {"A40", 300},
	} {
		if strings.Contains(up, c.sub) {
			return c.w
		}
	}
	return 300
}

func isDatacenterGPU(gpu string) bool {
	up := strings.ToUpper(gpu)
	return strings.HasPrefix(up, "A100") || strings.HasPrefix(up, "H100") || strings.HasPrefix(up, "A40") || strings.HasPrefix(up, "L40")
}

// gpuUUID is a stable "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" for GPU i of
// the machine slot the instance rents.
func gpuUUID(in *instance, i int) string {
	slot := in.offerID
	if slot == 0 {
		slot = in.id
	}
	sum := sha256.Sum256(fmt.Appendf(nil, "vastsim-gpu/%d/%d/%d", in.offer.MachineID, slot, i))
	h := hex.EncodeToString(sum[:16])
	return "GPU-" + h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// sampleGPUsLocked advances the simulated GPUs to now and reads them.
// Utilization follows the engine's in-flight generations; temperature
// follows utilization with a lag; power follows both; memory is what a
// vLLM engine holds (90 % of the board once the model is loaded). s.mu must
// be held.
func (s *Sim) sampleGPUsLocked(in *instance, now time.Time) []gpuReading {
	st := s.sshStateLocked(in)
	o := in.offer
	n := max(1, o.NumGPUs)
	if len(st.gpus) != n {
		st.gpus = make([]gpuSim, n)
		for i := range st.gpus {
			st.gpus[i] = gpuSim{temp: 31 + 3*mrand.Float64() + float64(i%3), at: now}
		}
	}
	inflight := float64(in.stats.InFlight)
	ready := in.engineReady(now, s.opts.EngineReadyDelay)
	limit := powerLimit(o.GPUName)
	name := smiName(o.GPUName, o.GPURAM)
	dc := isDatacenterGPU(o.GPUName)
	out := make([]gpuReading, n)
	for i := range st.gpus {
		g := &st.gpus[i]
		var util float64
		if inflight > 0 {
			util = math.Min(99, 18+22*inflight) + 8*(mrand.Float64()-0.5)
		} else {
			util = 3 * mrand.Float64()
		}
		util = math.Max(0, math.Min(100, util))
		target := 33 + 0.45*util + float64(i%3)
		dt := now.Sub(g.at).Seconds()
		g.temp += (target - g.temp) * (1 - math.Exp(-dt/12))
		g.at = now
		temp := math.Max(30, math.Min(85, g.temp+0.8*(mrand.Float64()-0.5)))

		idle := limit * 0.065
		power := idle + (0.88*limit-idle)*util/100 + 0.15*(temp-33) + 4*(mrand.Float64()-0.5)
		power = math.Max(idle*0.8, math.Min(limit-0.5, power))
		power = math.Round(power*100) / 100
		if power == g.lastPower {
			power += 0.07 // successive readings always differ
		}
		g.lastPower = power

		memUsed := int(float64(o.GPURAM)*0.35) + mrand.IntN(24)
		if ready {
			memUsed = int(float64(o.GPURAM)*0.9) + 310 + mrand.IntN(16) + int(inflight)*2
		}
		memUsed = min(memUsed, o.GPURAM-64)

		pstate := "P8"
		if util > 5 {
			pstate = "P2"
		}
		fan := 30
		if temp > 50 {
			fan = min(100, 30+int((temp-50)*2))
		}
		out[i] = gpuReading{
			index: i, uuid: gpuUUID(in, i), name: name,
			bus:    fmt.Sprintf("00000000:%02X:00.0", (1+i*0x20)%256),
			driver: o.DriverVersion,
			util:   int(math.Round(util)), memUtil: int(math.Round(util * 0.55 * (0.9 + 0.2*mrand.Float64()))),
			memUsed: memUsed, memTot: o.GPURAM, temp: int(math.Round(temp)), fan: fan, datacenter: dc,
			power: power, powerCap: limit, pstate: pstate,
			computeCapString: fmt.Sprintf("%d.%d", o.ComputeCap/100, o.ComputeCap%100/10),
		}
	}
	return out
}

// smiField is one --query-gpu property: its CSV header, unit and value.
type smiField struct {
	header string
	unit   string
	val    func(g gpuReading) string
}

var smiFields = map[string]smiField{
	"index":              {"index", "", func(g gpuReading) string { return strconv.Itoa(g.index) }},
	"uuid":               {"uuid", "", func(g gpuReading) string { return g.uuid }},
	"name":               {"name", "", func(g gpuReading) string { return g.name }},
	"pci.bus_id":         {"pci.bus_id", "", func(g gpuReading) string { return g.bus }},
	"driver_version":     {"driver_version", "", func(g gpuReading) string { return g.driver }},
	"pstate":             {"pstate", "", func(g gpuReading) string { return g.pstate }},
	"compute_cap":        {"compute_cap", "", func(g gpuReading) string { return g.computeCapString }},
	"utilization.gpu":    {"utilization.gpu", "%", func(g gpuReading) string { return strconv.Itoa(g.util) }},
	"utilization.memory": {"utilization.memory", "%", func(g gpuReading) string { return strconv.Itoa(g.memUtil) }},
	"memory.used":        {"memory.used", "MiB", func(g gpuReading) string { return strconv.Itoa(g.memUsed) }},
	"memory.total":       {"memory.total", "MiB", func(g gpuReading) string { return strconv.Itoa(g.memTot) }},
	"memory.free":        {"memory.free", "MiB", func(g gpuReading) string { return strconv.Itoa(g.memTot - g.memUsed) }},
	"temperature.gpu":    {"temperature.gpu", "", func(g gpuReading) string { return strconv.Itoa(g.temp) }},
	"power.draw":         {"power.draw", "W", func(g gpuReading) string { return strconv.FormatFloat(g.power, 'f', 2, 64) }},
	"power.limit":        {"power.limit", "W", func(g gpuReading) string { return strconv.FormatFloat(g.powerCap, 'f', 2, 64) }},
	"fan.speed": {"fan.speed", "%", func(g gpuReading) string {
		if g.datacenter {
			return "[N/A]" // passively cooled boards report no fan
		}
		return strconv.Itoa(g.fan)
	}},
}

// smiAliases are the alternative spellings nvidia-smi accepts.
var smiAliases = map[string]string{
	"gpu_uuid": "uuid", "gpu_name": "name", "gpu_bus_id": "pci.bus_id",
	"temperature.gpu.current": "temperature.gpu", "power.draw.instant": "power.draw",
	"power.draw.average": "power.draw", "enforced.power.limit": "power.limit",
}

// nvidiaSMILocked answers an nvidia-smi command line. s.mu must be held.
func (s *Sim) nvidiaSMILocked(in *instance, words []string, now time.Time) (string, string, int) {
	var query, format string
	list := false
	for i, w := range words {
		switch {
		case strings.HasPrefix(w, "--query-gpu="):
			query = strings.TrimPrefix(w, "--query-gpu=")
		case w == "--query-gpu" && i+1 < len(words):
			query = words[i+1]
		case strings.HasPrefix(w, "--format="):
			format = strings.TrimPrefix(w, "--format=")
		case w == "--format" && i+1 < len(words):
			format = words[i+1]
		case w == "-L" || w == "--list-gpus":
			list = true
		}
	}
	gpus := s.sampleGPUsLocked(in, now)
	var b strings.Builder
	switch {
	case query != "":
		opts := map[string]bool{}
		for _, f := range strings.Split(format, ",") {
			opts[strings.TrimSpace(f)] = true
		}
		if !opts["csv"] {
			return "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n", "", 2
		}
		var fields []smiField
		for _, q := range strings.Split(query, ",") {
			q = strings.TrimSpace(q)
			if a, ok := smiAliases[q]; ok {
				q = a
			}
			f, ok := smiFields[q]
			if !ok {
				return fmt.Sprintf("Field \"%s\" is not a valid field to query.\n\n", q), "", 2
			}
			fields = append(fields, f)
		}
		if !opts["noheader"] {
			hs := make([]string, len(fields))
			for i, f := range fields {
				hs[i] = f.header
				if f.unit != "" {
					hs[i] += " [" + f.unit + "]"
				}
			}
			b.WriteString(strings.Join(hs, ", ") + "\n")
		}
		for _, g := range gpus {
			vs := make([]string, len(fields))
			for i, f := range fields {
				vs[i] = f.val(g)
				if f.unit != "" && !opts["nounits"] && !strings.HasPrefix(vs[i], "[") {
					vs[i] += " " + f.unit
				}
			}
			b.WriteString(strings.Join(vs, ", ") + "\n")
		}
	case list:
		for _, g := range gpus {
			fmt.Fprintf(&b, "GPU %d: %s (UUID: %s)\n", g.index, g.name, g.uuid)
		}
	default:
		writeSMITable(&b, gpus, in.offer, now)
	}
	return b.String(), "", 0
}

// writeSMITable renders the default nvidia-smi summary.
func writeSMITable(b *strings.Builder, gpus []gpuReading, o Offer, now time.Time) {
	sep := "+-----------------------------------------+------------------------+----------------------+\n"
	cuda := strconv.FormatFloat(o.CUDAMaxGood, 'f', 1, 64)
	fmt.Fprintf(b, "%s\n", now.Format("Mon Jan _2 15:04:05 2006"))
	b.WriteString("+-----------------------------------------------------------------------------------------+\n")
	fmt.Fprintf(b, "| NVIDIA-SMI %-22s Driver Version: %-14s CUDA Version: %-9s|\n", o.DriverVersion, o.DriverVersion, cuda)
	b.WriteString(sep)
	b.WriteString("| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |\n")
	b.WriteString("| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |\n")
	b.WriteString("|=========================================+========================+======================|\n")
	for _, g := range gpus {
		name := g.name
		if len(name) > 26 {
			name = name[:26]
		}
		fan := fmt.Sprintf("%d%%", g.fan)
		if g.datacenter {
			fan = "N/A"
		}
		fmt.Fprintf(b, "|%4d  %-26s%7s  |%23s |%21s |\n", g.index, name, "On", g.bus+" Off", "Off")
		fmt.Fprintf(b, "| %-3s%6s%6s%24s |%23s |%8s%13s |\n", fan, strconv.Itoa(g.temp)+"C", g.pstate,
			fmt.Sprintf("%dW / %4dW", int(g.power), int(g.powerCap)),
			fmt.Sprintf("%dMiB / %6dMiB", g.memUsed, g.memTot),
			strconv.Itoa(g.util)+"%", "Default")
		b.WriteString(sep)
	}
}
