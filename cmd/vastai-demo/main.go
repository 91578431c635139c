// Command vastai-demo runs a complete local demo with no vast.ai account:
// a simulated vast.ai API (vastsim) with three running GPU instances, each
// serving an OpenAI-compatible engine on loopback, and Caddy with the
// caddy-vastai plugin in front of them.
//
//	go run ./cmd/vastai-demo
//
// Then try the curl lines it prints. Stop it with Ctrl-C.
package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"golang.org/x/crypto/ssh"

	_ "github.com/caddy-vastai/caddy-vastai"
	"github.com/caddy-vastai/caddy-vastai/vastsim"
)

const demoKey = "demo-key"

func main() {
	listen := flag.String("listen", ":8080", "address of the demo's proxy")
	simAddr := flag.String("sim", "127.0.0.1:8787", "address of the simulated vast.ai API")
	instances := flag.Int("instances", 3, "number of simulated GPU instances")
	flag.Parse()

	sim := vastsim.New(vastsim.Options{APIKey: demoKey, LoadingDelay: 5 * time.Second})
	simURL, err := sim.Start(*simAddr)
	if err != nil {
		log.Fatalf("starting the simulated vast.ai API on %s: %v", *simAddr, err)
	}
	for i := 1; i <= *instances; i++ {
		if _, err := sim.Launch(vastsim.LaunchSpec{Label: fmt.Sprintf("llm-%d", i), GPUName: "RTX 4090", NumGPUs: 1, DPH: 0.35 + 0.05*float64(i), Running: true}); err != nil {
			log.Fatalf("launching simulated instance: %v", err)
		}
	}

	dir, err := os.MkdirTemp("", "vastai-demo-")
	if err != nil {
		log.Fatal(err)
	}
	// The simulated instances accept any SSH key: make one for GPU metrics.
	keyFile := filepath.Join(dir, "id_ed25519")
	if err := writeKey(keyFile); err != nil {
		log.Fatal(err)
	}
	caddyfile := fmt.Sprintf(`{
	admin localhost:2019
	storage file_system %s
	vastai {
		api_key {env.VAST_API_KEY}
		api_url %s
		poll_interval 2s
		gateway_id demo
		ssh {
			key %s
			metrics_interval 5s
		}
		# Routes to the instances labelled llm-*.
		pool llm {
			label_prefix llm-
			port 8000
			token jupyter_token
			health {
				interval 2s
			}
		}
		# Provisions instances on demand: POST /vastai/pools/gen/instances.
		pool gen {
			health {
				interval 2s
			}
			provision {
				image vllm/vllm-openai:latest
				disk 20
				offer {
					gpu_name "RTX 4090"
					num_gpus 1
				}
				max_instances 2
				max_price_per_hour 1
			}
		}
	}
}

http://%s {
	handle_path /gen/* {
		vastai_proxy gen {
			lb_try_duration 10s
		}
	}
	vastai_proxy llm {
		lb_policy round_robin
		lb_try_duration 10s
	}
}
`, filepath.Join(dir, "storage"), simURL, keyFile, *listen)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		log.Fatal(err)
	}
	if err := os.Setenv("VAST_API_KEY", demoKey); err != nil {
		log.Fatal(err)
	}

	proxy := "http://localhost" + *listen
	fmt.Printf(`
caddy-vastai demo
  simulated vast.ai API: %s  (key %q, %d instances labelled llm-1..llm-%d)
  Caddyfile:             %s
  proxy:                 %s
  admin API:             http://localhost:2019/vastai/instances

Try:
  curl -s %s/v1/models
  curl -s %s/v1/completions -H 'Content-Type: application/json' -d '{"model":"vastsim/tiny-llm","prompt":"Hello","max_tokens":8}'
  curl -sN %s/v1/chat/completions -H 'Content-Type: application/json' -d '{"model":"vastsim/tiny-llm","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"Hi"}]}'
  curl -s localhost:2019/vastai/instances        # states, probes, GPU figures over SSH
  curl -s localhost:2019/vastai/pools/llm
  curl -s localhost:2019/metrics | grep caddy_vastai

Provision an instance (about 10s in the simulator), then use it:
  curl -s -X POST localhost:2019/vastai/pools/gen/instances
  curl -s localhost:2019/vastai/operations
  curl -s %s/gen/v1/models
  curl -s -X DELETE localhost:2019/vastai/instances/<id>

`, simURL, demoKey, *instances, *instances, path, proxy, proxy, proxy, proxy, proxy)

	os.Args = []string{"caddy", "run", "--config", path, "--adapter", "caddyfile"}
	caddycmd.Main()
}

// writeKey writes a new ed25519 private key in OpenSSH format.
func writeKey(path string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := ssh.MarshalPrivateKey(priv, "vastai-demo")
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(block), 0o600)
}
