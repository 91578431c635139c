package vastsim

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Offer is one rentable ask in the simulated marketplace. Zero fields get
// plausible defaults in New, so a test only sets what it cares about.
type Offer struct {
	// ID is the ask id used with PUT /api/v0/asks/{id}/; 0 assigns one.
	ID        int64
	MachineID int64
	HostID    int64
	// GPUName uses vast.ai's spelling with spaces, e.g. "RTX 4090".
	GPUName string
	NumGPUs int
	// GPURAM is per GPU in MB as the driver reports it (24564 for a
	// "24 GB" RTX 4090, 32607 for a "32 GB" RTX 5090), not a marketing size.
	GPURAM int
	// DPHBase is the GPU price of the whole offer in $/hour, without storage.
	DPHBase float64
	// MinBid is the lowest interruptible price in $/hour.
	MinBid float64
	// StorageCost is in $/GB/month.
	StorageCost float64
	// Geolocation is free text "Region, CC" ("Texas, US"); filters match the
	// two-letter country code.
	Geolocation     string
	Reliability2    float64
	DirectPortCount int
	Verified        bool
	// Unverified marks an offer as "unverified"; Verified=false alone is not
	// enough because the zero value must default to a verified offer.
	Unverified    bool
	CUDAMaxGood   float64
	DriverVersion string
	ComputeCap    int
	DiskSpace     float64
	InetUp        float64
	InetDown      float64
	CPUName       string
	CPUCores      int
	CPURAM        int
	// MaxDuration is the longest rental the host accepts; it sets the
	// instance's end_date. Default 30 days.
	MaxDuration time.Duration
}

// defaultOffers is a small but varied catalog: several machines (one with
// two single-GPU offers), four GPU models, prices, countries, reliability
// levels and one machine without open ports, so that offer selection logic
// has real choices to make.
func defaultOffers() []Offer {
	return []Offer{
		{ID: 29907796, MachineID: 41001, HostID: 9001, GPUName: "RTX 4090", NumGPUs: 1, GPURAM: 24564, DPHBase: 0.35, Geolocation: "Texas, US", Reliability2: 0.9952, DirectPortCount: 20, CUDAMaxGood: 12.4, DriverVersion: "550.127.05", ComputeCap: 890},
		{ID: 29907797, MachineID: 41001, HostID: 9001, GPUName: "RTX 4090", NumGPUs: 1, GPURAM: 24564, DPHBase: 0.36, Geolocation: "Texas, US", Reliability2: 0.9952, DirectPortCount: 20, CUDAMaxGood: 12.4, DriverVersion: "550.127.05", ComputeCap: 890},
		{ID: 29911230, MachineID: 41002, HostID: 9002, GPUName: "RTX 4090", NumGPUs: 1, GPURAM: 24564, DPHBase: 0.40, Geolocation: "Quebec, CA", Reliability2: 0.9913, DirectPortCount: 8, CUDAMaxGood: 12.6, DriverVersion: "560.35.03", ComputeCap: 890},
		{ID: 29915501, MachineID: 41003, HostID: 9003, GPUName: "RTX 4090", NumGPUs: 2, GPURAM: 24564, DPHBase: 0.78, Geolocation: "Spain, ES", Reliability2: 0.9871, DirectPortCount: 16, CUDAMaxGood: 12.4, DriverVersion: "550.120", ComputeCap: 890},
		{ID: 29918842, MachineID: 41004, HostID: 9004, GPUName: "RTX 4090", NumGPUs: 1, GPURAM: 24564, DPHBase: 0.29, Geolocation: ", CN", Reliability2: 0.9310, DirectPortCount: 0, CUDAMaxGood: 12.2, DriverVersion: "535.183.01", ComputeCap: 890, Unverified: true},
		{ID: 29920113, MachineID: 42001, HostID: 9101, GPUName: "RTX 3090", NumGPUs: 1, GPURAM: 24576, DPHBase: 0.18, Geolocation: "California, US", Reliability2: 0.9804, DirectPortCount: 12, CUDAMaxGood: 12.2, DriverVersion: "535.183.01", ComputeCap: 860},
		{ID: 29920114, MachineID: 42002, HostID: 9102, GPUName: "RTX 3090", NumGPUs: 1, GPURAM: 24576, DPHBase: 0.16, Geolocation: "Poland, PL", Reliability2: 0.9702, DirectPortCount: 4, CUDAMaxGood: 12.4, DriverVersion: "550.54.14", ComputeCap: 860},
		{ID: 29920560, MachineID: 42003, HostID: 9103, GPUName: "RTX 3090", NumGPUs: 4, GPURAM: 24576, DPHBase: 0.70, Geolocation: "Texas, US", Reliability2: 0.9855, DirectPortCount: 40, CUDAMaxGood: 12.4, DriverVersion: "550.107.02", ComputeCap: 860},
		{ID: 29931007, MachineID: 43001, HostID: 9201, GPUName: "A100 SXM4", NumGPUs: 1, GPURAM: 81920, DPHBase: 1.10, Geolocation: "Oregon, US", Reliability2: 0.9991, DirectPortCount: 64, CUDAMaxGood: 12.6, DriverVersion: "560.35.03", ComputeCap: 800},
		{ID: 29931008, MachineID: 43002, HostID: 9202, GPUName: "A100 PCIE", NumGPUs: 1, GPURAM: 40960, DPHBase: 0.85, Geolocation: "Netherlands, NL", Reliability2: 0.9962, DirectPortCount: 24, CUDAMaxGood: 12.4, DriverVersion: "550.90.07", ComputeCap: 800},
		// The first RTX 5090 advertises CUDA 12.9 on a 570.124.04 driver
		// (really CUDA 12.8), the mismatch cloud-gpu-shopper hit (BUG-004).
		{ID: 29940001, MachineID: 44001, HostID: 9301, GPUName: "RTX 5090", NumGPUs: 1, GPURAM: 32607, DPHBase: 0.65, Geolocation: "Virginia, US", Reliability2: 0.9930, DirectPortCount: 10, CUDAMaxGood: 12.9, DriverVersion: "570.124.04", ComputeCap: 1200},
		{ID: 29940002, MachineID: 44002, HostID: 9302, GPUName: "RTX 5090", NumGPUs: 1, GPURAM: 32607, DPHBase: 0.70, Geolocation: "Bavaria, DE", Reliability2: 0.9901, DirectPortCount: 10, CUDAMaxGood: 12.8, DriverVersion: "570.133.07", ComputeCap: 1200},
	}
}

// withDefaults fills zero fields. Verified defaults to true unless the offer
// is explicitly Unverified.
func (o Offer) withDefaults() Offer {
	if o.GPUName == "" {
		o.GPUName = "RTX 4090"
	}
	if o.NumGPUs <= 0 {
		o.NumGPUs = 1
	}
	if o.GPURAM <= 0 {
		o.GPURAM = gpuRAMFor(o.GPUName)
	}
	if o.DPHBase <= 0 {
		o.DPHBase = 0.35 * float64(o.NumGPUs)
	}
	if o.MinBid <= 0 {
		o.MinBid = math.Round(o.DPHBase*0.45*10000) / 10000
	}
	if o.StorageCost <= 0 {
		o.StorageCost = 0.15
	}
	if o.Geolocation == "" {
		o.Geolocation = "Texas, US"
	}
	if o.Reliability2 <= 0 {
		o.Reliability2 = 0.99
	}
	if o.HostID == 0 {
		o.HostID = 9000 + o.MachineID%1000
	}
	o.Verified = !o.Unverified
	if o.CUDAMaxGood <= 0 {
		o.CUDAMaxGood = 12.4
	}
	if o.DriverVersion == "" {
		o.DriverVersion = "550.127.05"
	}
	if o.ComputeCap <= 0 {
		o.ComputeCap = 890
	}
	if o.DiskSpace <= 0 {
		o.DiskSpace = 500
	}
	if o.InetUp <= 0 {
		o.InetUp = 850
	}
	if o.InetDown <= 0 {
		o.InetDown = 920
	}
	if o.CPUName == "" {
		o.CPUName = "AMD EPYC 7543 32-Core Processor"
	}
	if o.CPUCores <= 0 {
		o.CPUCores = 64
	}
	if o.CPURAM <= 0 {
		o.CPURAM = 128788
	}
	if o.MaxDuration <= 0 {
		o.MaxDuration = 30 * 24 * time.Hour
	}
	return o
}

// gpuRAMFor returns driver-reported MB for well-known cards.
func gpuRAMFor(name string) int {
	switch strings.ToUpper(name) {
	case "RTX 4090", "RTX A5000":
		return 24564
	case "RTX 3090":
		return 24576
	case "RTX 5090":
		return 32607
	case "A100 SXM4", "A100 80GB", "H100 SXM", "H100 PCIE":
		return 81920
	case "A100 PCIE":
		return 40960
	}
	return 24564
}

// countryCode extracts the two-letter country from "Region, CC".
func countryCode(geo string) string {
	if i := strings.LastIndex(geo, ","); i >= 0 {
		return strings.TrimSpace(geo[i+1:])
	}
	return strings.TrimSpace(geo)
}

// driverVers renders "535.183.01" as 535183001, the integer form vast.ai
// uses for numeric comparisons.
func driverVers(v string) int64 {
	parts := strings.Split(v, ".")
	var out int64
	for i := 0; i < 3; i++ {
		var n int64
		if i < len(parts) {
			fmt.Sscanf(parts[i], "%d", &n)
		}
		out = out*1000 + n
	}
	return out
}

// storageHour converts $/GB/month into $/hour for a disk size, with the
// 720-hour month the docs' example numbers imply.
func storageHour(costPerGBMonth, diskGB float64) float64 {
	return costPerGBMonth * diskGB / 720
}

func costBlock(gpu, disk float64) map[string]any {
	return map[string]any{
		"gpuCostPerHour":         gpu,
		"diskHour":               disk,
		"totalHour":              gpu + disk,
		"discountTotalHour":      0.0,
		"discountedTotalPerHour": gpu + disk,
	}
}

// offerJSON renders an offer as the bundles endpoint does. allocated is the
// disk size (GB) the query priced storage at.
func offerJSON(o Offer, allocated float64, now time.Time) map[string]any {
	disk := storageHour(o.StorageCost, allocated)
	total := o.DPHBase + disk
	verification := "verified"
	if !o.Verified {
		verification = "unverified"
	}
	start := float64(now.Add(-72*time.Hour).UnixNano()) / 1e9
	end := float64(now.Add(o.MaxDuration).Unix())
	dlperf := 25.0 * float64(o.NumGPUs) * float64(o.ComputeCap) / 890
	gpuIDs := make([]any, o.NumGPUs)
	for i := range gpuIDs {
		gpuIDs[i] = o.MachineID*10 + int64(i)
	}
	return map[string]any{
		"id":                        o.ID,
		"ask_contract_id":           o.ID,
		"bundle_id":                 o.ID + 600000000,
		"bundled_results":           nil,
		"machine_id":                o.MachineID,
		"host_id":                   o.HostID,
		"cluster_id":                nil,
		"rn":                        1,
		"num_gpus":                  o.NumGPUs,
		"gpu_name":                  o.GPUName,
		"gpu_arch":                  "nvidia",
		"gpu_ram":                   o.GPURAM,
		"gpu_total_ram":             o.GPURAM * o.NumGPUs,
		"gpu_frac":                  1.0,
		"gpu_ids":                   gpuIDs,
		"gpu_lanes":                 16,
		"gpu_mem_bw":                900.5,
		"gpu_max_power":             450,
		"gpu_max_temp":              83,
		"gpu_display_active":        false,
		"compute_cap":               o.ComputeCap,
		"cuda_max_good":             o.CUDAMaxGood,
		"driver_version":            o.DriverVersion,
		"driver_vers":               driverVers(o.DriverVersion),
		"bw_nvlink":                 0,
		"cpu_name":                  o.CPUName,
		"cpu_cores":                 o.CPUCores,
		"cpu_cores_effective":       float64(o.CPUCores) / 2,
		"cpu_ghz":                   2.8,
		"cpu_ram":                   o.CPURAM,
		"cpu_arch":                  "amd64",
		"has_avx":                   1,
		"disk_space":                o.DiskSpace,
		"disk_bw":                   2800.5,
		"disk_name":                 "Samsung SSD 990 PRO 2TB",
		"avail_vol_ask_id":          nil,
		"avail_vol_dph":             nil,
		"avail_vol_size":            nil,
		"nw_disk_min_bw":            nil,
		"nw_disk_max_bw":            nil,
		"nw_disk_avg_bw":            nil,
		"inet_up":                   o.InetUp,
		"inet_down":                 o.InetDown,
		"inet_up_cost":              0.005,
		"inet_down_cost":            0.005,
		"internet_up_cost_per_tb":   5.0,
		"internet_down_cost_per_tb": 5.0,
		"direct_port_count":         o.DirectPortCount,
		"static_ip":                 o.DirectPortCount > 0,
		"public_ipaddr":             "127.0.0.1",
		"pci_gen":                   4,
		"pcie_bw":                   24.3,
		"dph_base":                  o.DPHBase,
		"dph_total":                 total,
		"dph_total_adj":             total,
		"discounted_dph_total":      total,
		"discount_rate":             0.0,
		"discounted_hourly":         0.0,
		"min_bid":                   o.MinBid,
		"storage_cost":              o.StorageCost,
		"storage_total_cost":        disk,
		"vram_costperhour":          o.DPHBase / float64(o.GPURAM*o.NumGPUs),
		"credit_discount_max":       0.4,
		"search":                    costBlock(o.DPHBase, disk),
		"instance":                  costBlock(0, disk),
		"reliability":               o.Reliability2,
		"reliability2":              o.Reliability2,
		"reliability_mult":          1.0,
		"expected_reliability":      o.Reliability2,
		"verification":              verification,
		"vericode":                  boolInt(o.Verified),
		"score":                     dlperf / total * o.Reliability2,
		"dlperf":                    dlperf,
		"dlperf_per_dphtotal":       dlperf / total,
		"flops_per_dphtotal":        82.6 * float64(o.NumGPUs) / total,
		"total_flops":               82.6 * float64(o.NumGPUs),
		"rentable":                  true,
		"rented":                    false,
		"is_bid":                    false,
		"external":                  false,
		"hosting_type":              0,
		"resource_type":             "gpu",
		"vms_enabled":               false,
		"is_vm_deverified":          false,
		"start_date":                start,
		"end_date":                  end,
		"duration":                  o.MaxDuration.Seconds(),
		"time_remaining":            "",
		"time_remaining_isbid":      "",
		"geolocation":               o.Geolocation,
		"geolocode":                 nil,
		"hostname":                  nil,
		"mobo_name":                 "ROMED8-2T",
		"os_version":                "22.04",
		"logo":                      "/static/logos/vastai_small2.png",
		"webpage":                   nil,
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// offerNonFilterKeys are keys of an offer query that are options, not
// filters, so they are exempt from the "operator object" rule.
var offerNonFilterKeys = map[string]bool{
	"order": true, "type": true, "limit": true, "allocated_storage": true,
	"disable_bundling": true, "target_reliability": true, "extra_ids": true,
	"gpu_option": true, "show_incompatible": true, "sort_option": true,
	"template_id": true, "select_cols": true,
}
