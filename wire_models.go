package vastai

// Wiring of model learning: while a loaded config has a vastai_models
// handler, one loop per reload-surviving state reads every routable
// instance's GET /v1/models through the same path as traffic (its Bearer
// token, its SSH tunnel when the pool's routes use one) and publishes the
// pools' model ids for the handler (models.go). Started by state.apply,
// stopped by a config without vastai_models and by state.Destruct.

import (
	"context"
	"net/http"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/adminapi"
	"github.com/caddy-vastai/caddy-vastai/enginestate"
)

// modelsPath is where OpenAI-compatible engines (vLLM, SGLang, TGI,
// Ollama, llama.cpp) list their models.
const modelsPath = "/v1/models"

// modelRuntime is the state's running learner; guarded by state.mu.
type modelRuntime struct {
	cancel context.CancelFunc
	done   chan struct{}
	client *http.Client
}

// applyModelsLocked starts the learner when enabled and not running, and
// stops it when disabled. A running learner is kept across reloads with
// its ids. The caller holds s.mu.
func (s *state) applyModelsLocked(log *zap.Logger, enabled bool) {
	if !enabled {
		s.stopModelsLocked()
		return
	}
	if s.modRT != nil {
		return
	}
	client := &http.Client{Transport: s.engineTransport(), CheckRedirect: noRedirects}
	l := &enginestate.ModelLearner{Client: client, Log: log.Named("models")}
	l.Targets = func() []enginestate.ModelTarget { return s.modelTargets(client) }
	ctx, cancel := context.WithCancel(context.Background())
	rt := &modelRuntime{cancel: cancel, done: make(chan struct{}), client: client}
	s.modRT = rt
	s.models.Store(l)
	go func() {
		defer close(rt.done)
		l.Run(ctx)
	}()
}

// stopModelsLocked stops the learner and waits for its reads. The caller
// holds s.mu; the learner never takes it.
func (s *state) stopModelsLocked() {
	rt := s.modRT
	if rt == nil {
		return
	}
	rt.cancel()
	<-rt.done
	rt.client.CloseIdleConnections()
	s.modRT = nil
	s.models.Store(nil)
}

// modelTargets lists the routable instances of every pool with their
// model list URL and token, from the current snapshot.
func (s *state) modelTargets(client *http.Client) []enginestate.ModelTarget {
	snap := s.watcher.Snapshot()
	var out []enginestate.ModelTarget
	for name, pv := range snap.Pools {
		for _, t := range pv.Targets {
			route, ok := snap.Route(t.Dial)
			if !ok {
				continue
			}
			token := route.Token
			out = append(out, enginestate.ModelTarget{
				ID:   t.ID,
				Pool: name,
				URL:  "http://" + t.Dial + modelsPath,
				Do: func(req *http.Request) (*http.Response, error) {
					req.Header.Set("Authorization", "Bearer "+token)
					return client.Do(req)
				},
			})
		}
	}
	return out
}

// addModels adds what was learned of an instance's models to its admin
// view.
func (s *state) addModels(v *adminapi.Instance) {
	in, ok := s.modelSnapshot().Instance(v.ID)
	if !ok {
		return
	}
	if in.Learned {
		v.Models = in.IDs
	}
	if in.Err != nil {
		v.ModelsError = in.Err.Error()
	}
}

// modelSnapshot returns what the engines serve; nil while no learner runs
// or before its first snapshot. Lock-free; safe on the request path.
func (s *state) modelSnapshot() *enginestate.Models {
	l := s.models.Load()
	if l == nil {
		return nil
	}
	return l.Snapshot()
}
