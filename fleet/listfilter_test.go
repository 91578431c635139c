package fleet

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/caddy-vastai/caddy-vastai/vastclient"
)

// optsLister records the options of every listing.
type optsLister struct {
	mu   sync.Mutex
	opts []vastclient.ListOptions
	res  *vastclient.ListResult
}

func (l *optsLister) ListInstances(_ context.Context, o vastclient.ListOptions) (*vastclient.ListResult, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.opts = append(l.opts, o)
	return l.res, nil
}

// TestListingAsksOnlyForWhatPoolsSelect checks the listing's server-side
// filter: exact-label pools list only their labels; anything needing a
// prefix (label_prefix, a provisioning pool's "cv:", a prefix reconcile
// needs) or a catch-all pool lists the whole account, because the v1 list
// has no prefix operator and a range on label is not exact.
func TestListingAsksOnlyForWhatPoolsSelect(t *testing.T) {
	tests := []struct {
		name    string
		pools   []PoolSpec
		include []string
		want    []string // nil: the whole account
	}{
		{"exact labels", []PoolSpec{{Name: "b", Label: "vllm-b"}, {Name: "a", Label: "vllm-a"}, {Name: "c", Label: "vllm-a"}}, nil, []string{"vllm-a", "vllm-b"}},
		{"a prefix pool", []PoolSpec{{Name: "a", Label: "vllm-a"}, {Name: "p", LabelPrefix: "llm-"}}, nil, nil},
		{"a provisioning pool", []PoolSpec{{Name: "a", Label: "vllm-a", ManagedPrefix: "cv:gw:a:"}}, nil, nil},
		{"a catch-all pool", []PoolSpec{{Name: "a", Label: "vllm-a"}, {Name: "all"}}, nil, nil},
		{"reconcile needs cv:", []PoolSpec{{Name: "a", Label: "vllm-a"}}, []string{"cv:"}, nil},
		{"no pools", nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &optsLister{res: result(running(1, "vllm-a", 9000))}
			w := NewWatcher(nil)
			w.Configure(l, Config{Pools: tt.pools, PollInterval: time.Hour, IncludePrefixes: tt.include})
			if err := w.Poll(context.Background()); err != nil {
				t.Fatal(err)
			}
			got := l.opts[len(l.opts)-1]
			if !reflect.DeepEqual(got.Labels, tt.want) || got.Label != "" {
				t.Errorf("listed with %+v, want labels %q", got, tt.want)
			}
			if f := w.Snapshot().Poll.LabelFilter; !reflect.DeepEqual(f, tt.want) {
				t.Errorf("poll status filter %q, want %q", f, tt.want)
			}
		})
	}
}
