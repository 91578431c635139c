// Package vastclient is a client for the parts of the vast.ai REST API that
// caddy-vastai needs: listing, showing, creating, labelling, starting,
// stopping and destroying instances, searching offers and reading the
// account.
//
// It is written for money safety. A failed or malformed listing is an
// error, never an empty list; a create whose outcome is unknown is reported
// as such (ErrCreateUncertain) instead of being retried; every request is
// paced per endpoint to stay under vast.ai's rate limits; and the API key is
// sent only in the Authorization header and never appears in errors or logs.
package vastclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/caddy-vastai/caddy-vastai/internal/ctxutil"
)

// Version is the client version, sent in the default User-Agent.
const Version = "0.1.0"

// DefaultBaseURL is the vast.ai API host. The legacy https://vast.ai host
// answers 308, and redirects are not followed (see New).
const DefaultBaseURL = "https://console.vast.ai"

// Defaults applied by New to zero Config fields.
const (
	// DefaultRequestTimeout bounds each attempt. The official CLI waits
	// 120s; 30s keeps a stuck call from holding the reconciler for long.
	DefaultRequestTimeout = 30 * time.Second
	// DefaultMaxAttempts is the number of attempts per call, first included.
	DefaultMaxAttempts = 4
	// DefaultBackoffBase is the backoff before the first retry.
	DefaultBackoffBase = 500 * time.Millisecond
	// DefaultBackoffMax caps the backoff between attempts.
	DefaultBackoffMax = 10 * time.Second
)

// Label limits enforced before any request is sent.
const (
	// MaxCreateLabelLen is the longest label, in characters, vast.ai
	// accepts at creation.
	MaxCreateLabelLen = 256
	// MaxLabelLen is the longest label, in characters, the label endpoint
	// accepts.
	MaxLabelLen = 1024
)

const (
	// listPageLimit is the largest page vast.ai serves on the v1 list.
	listPageLimit = 25
	// maxListPages stops a server that keeps handing out fresh cursors
	// (10,000 instances is far beyond any account this plugin manages).
	maxListPages = 400
	// maxResponseBytes protects memory from a runaway body; a full page of
	// 25 instances is around 100 KB.
	maxResponseBytes = 16 << 20
)

// ErrUnexpectedResponse means a 2xx answer could not be understood: not
// JSON, or without the key the endpoint always returns. It is never turned
// into an empty result.
var ErrUnexpectedResponse = errors.New("vast.ai: unexpected response")

// Config configures a Client. Only APIKey is required.
type Config struct {
	// BaseURL is the API host, default https://console.vast.ai. A trailing
	// slash is trimmed; a path prefix is kept (for a test server or proxy).
	BaseURL string
	// APIKey is the vast.ai API key. It is sent only as a Bearer token.
	APIKey string
	// UserAgent defaults to "caddy-vastai/" + Version.
	UserAgent string
	// HTTPClient is used for all requests; nil means a private client with
	// a clone of http.DefaultTransport. The Client works on a shallow copy
	// whose CheckRedirect refuses redirects.
	HTTPClient *http.Client
	// RequestTimeout bounds each attempt (not the whole call, which the
	// caller bounds with its context). Default 30s.
	RequestTimeout time.Duration
	// Pacing is the minimum interval between request starts per endpoint.
	// nil means DefaultPacing(); endpoints missing from a non-nil map keep
	// their default; an entry of 0 disables pacing for that endpoint.
	Pacing map[Endpoint]time.Duration
	// MaxAttempts bounds the attempts per call, retries included. Default 4.
	MaxAttempts int
	// BackoffBase and BackoffMax shape the jittered exponential backoff
	// between attempts. Defaults 500ms and 10s.
	BackoffBase, BackoffMax time.Duration
	// Logger receives debug logs of retries and warnings about uncertain
	// creates. nil means no logging.
	Logger *zap.Logger
}

// Client talks to the vast.ai API. It is safe for concurrent use, and its
// pacing is shared by all goroutines using it, so a process should use one
// Client per API key.
type Client struct {
	base        string
	key         string
	red         *redactor
	userAgent   string
	hc          *http.Client
	timeout     time.Duration
	pacers      map[Endpoint]*pacer
	maxAttempts int
	backoffBase time.Duration
	backoffMax  time.Duration
	log         *zap.Logger
}

// New validates cfg, applies defaults and returns a Client.
func New(cfg Config) (*Client, error) {
	key, err := checkKey(cfg.APIKey)
	if err != nil {
		return nil, err
	}
	base, err := checkBaseURL(cfg.BaseURL, key)
	if err != nil {
		return nil, err
	}
	pacers, err := newPacers(cfg.Pacing)
	if err != nil {
		return nil, err
	}
	c := &Client{
		base:        base,
		key:         key,
		red:         newRedactor(key),
		userAgent:   cfg.UserAgent,
		timeout:     cfg.RequestTimeout,
		pacers:      pacers,
		maxAttempts: cfg.MaxAttempts,
		backoffBase: cfg.BackoffBase,
		backoffMax:  cfg.BackoffMax,
		log:         cfg.Logger,
		hc:          newHTTPClient(cfg.HTTPClient),
	}
	c.setDefaults()
	return c, nil
}

// checkKey trims the API key and refuses one that could not be sent in a
// header as given (a pasted key with a newline would otherwise fail every
// call with a confusing error).
func checkKey(raw string) (string, error) {
	key := strings.TrimSpace(raw)
	if key == "" {
		return "", errors.New("vastclient: api_key is required")
	}
	if strings.IndexFunc(key, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return "", errors.New("vastclient: api_key contains whitespace or control characters")
	}
	return key, nil
}

// checkBaseURL returns the API's base URL without a trailing slash; errors
// quote it with the key redacted, in case it was pasted into the URL.
func checkBaseURL(raw, key string) (string, error) {
	base := strings.TrimSpace(raw)
	if base == "" {
		base = DefaultBaseURL
	}
	base = strings.TrimRight(base, "/")
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("vastclient: api_url %q must be an absolute http or https URL", redact(base, key))
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("vastclient: api_url %q must not contain credentials, a query or a fragment", redact(u.Redacted(), key))
	}
	return base, nil
}

// newPacers builds one pacer per endpoint from the defaults and the
// configured overrides.
func newPacers(overrides map[Endpoint]time.Duration) (map[Endpoint]*pacer, error) {
	pacing := DefaultPacing()
	for ep, d := range overrides {
		if _, ok := pacing[ep]; !ok {
			return nil, fmt.Errorf("vastclient: pacing: unknown endpoint %q", ep)
		}
		if d < 0 {
			return nil, fmt.Errorf("vastclient: pacing: negative interval %s for %q", d, ep)
		}
		pacing[ep] = d
	}
	pacers := make(map[Endpoint]*pacer, len(allEndpoints))
	for _, ep := range allEndpoints {
		pacers[ep] = &pacer{interval: pacing[ep]}
	}
	return pacers, nil
}

// setDefaults fills the settings left zero.
func (c *Client) setDefaults() {
	if c.userAgent == "" {
		c.userAgent = "caddy-vastai/" + Version
	}
	if c.timeout <= 0 {
		c.timeout = DefaultRequestTimeout
	}
	if c.maxAttempts <= 0 {
		c.maxAttempts = DefaultMaxAttempts
	}
	if c.backoffBase <= 0 {
		c.backoffBase = DefaultBackoffBase
	}
	if c.backoffMax <= 0 {
		c.backoffMax = DefaultBackoffMax
	}
	if c.backoffMax < c.backoffBase {
		c.backoffMax = c.backoffBase
	}
	if c.log == nil {
		c.log = zap.NewNop()
	}
}

// newHTTPClient copies the given client, or clones the default transport,
// so that setting CheckRedirect never changes a client the caller shares.
func newHTTPClient(given *http.Client) *http.Client {
	var hc http.Client
	if given != nil {
		hc = *given
	} else if t, ok := http.DefaultTransport.(*http.Transport); ok {
		hc.Transport = t.Clone()
	}
	// Following a redirect would re-send a PUT or DELETE body to another
	// URL (and the bearer token with it); a 3xx is reported as an error so
	// a wrong api_url is noticed instead.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &hc
}

// call describes one logical API call, which may take several attempts.
type call struct {
	ep     Endpoint
	method string
	tmpl   string // path template, used in errors and logs
	path   string // real path
	query  url.Values
	body   []byte // nil: no request body
	// create marks the non-idempotent create: it is retried only when the
	// server certainly did not act on it.
	create bool
}

type response struct {
	status int
	body   []byte
}

func (r *response) ok() bool { return r.status >= 200 && r.status <= 299 }

// retryable reports whether an answer with this status may be retried.
func (cl *call) retryable(status int) bool {
	switch status {
	case http.StatusTooManyRequests:
		// vast.ai rejects a rate-limited request before acting on it.
		return true
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		// A gateway error on create may hide a create that went through.
		return !cl.create
	}
	return false
}

// do performs cl with pacing and retries. It returns the final HTTP answer
// whatever its status, unless the status was retryable on every attempt, in
// which case the last one becomes an *APIError. Transport failures are
// returned as errors; on create, a failure after a connection was made wraps
// ErrCreateUncertain.
func (c *Client) do(ctx context.Context, cl *call) (*response, error) {
	var lastErr error
	for attempt := 1; ; attempt++ {
		if err := c.pacers[cl.ep].wait(ctx); err != nil {
			if lastErr != nil {
				return nil, fmt.Errorf("%w (retry abandoned: %w)", lastErr, err)
			}
			return nil, fmt.Errorf("vast.ai %s %s: waiting for a request slot: %w", cl.method, cl.tmpl, err)
		}
		resp, connected, err := c.once(ctx, cl)
		if err != nil {
			terr := &transportError{method: cl.method, path: cl.tmpl, err: err}
			if cl.create && connected {
				// The request may have reached vast.ai; only a lookup by
				// label can tell whether an instance was created.
				c.log.Warn("vast.ai create outcome unknown",
					zap.String("path", cl.tmpl), zap.Error(c.wrap(terr)))
				return nil, fmt.Errorf("%w: %w", ErrCreateUncertain, terr)
			}
			if cerr := ctx.Err(); cerr != nil {
				if errors.Is(terr, cerr) {
					return nil, terr
				}
				return nil, fmt.Errorf("%w (%w)", terr, cerr)
			}
			lastErr = terr
		} else if cl.retryable(resp.status) && !(cl.create && hasNewContract(resp.body)) {
			lastErr = c.apiError(cl, resp)
		} else {
			return resp, nil
		}

		if attempt >= c.maxAttempts {
			return nil, lastErr
		}
		delay := backoffDelay(c.backoffBase, c.backoffMax, attempt)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
			return nil, fmt.Errorf("%w (retry abandoned: backoff %s exceeds the deadline: %w)",
				lastErr, delay.Round(time.Millisecond), context.DeadlineExceeded)
		}
		c.log.Debug("vast.ai request failed, retrying",
			zap.String("method", cl.method), zap.String("path", cl.tmpl),
			zap.Int("attempt", attempt), zap.Duration("backoff", delay),
			zap.Error(c.wrap(lastErr)))
		if err := ctxutil.Sleep(ctx, delay); err != nil {
			return nil, fmt.Errorf("%w (retry abandoned: %w)", lastErr, err)
		}
	}
}

// once performs a single attempt. connected reports whether a connection
// was obtained, i.e. whether any byte of the request may have been sent.
func (c *Client) once(ctx context.Context, cl *call) (resp *response, connected bool, err error) {
	actx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var gotConn atomic.Bool
	actx = httptrace.WithClientTrace(actx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { gotConn.Store(true) },
	})

	target := c.base + cl.path
	if len(cl.query) > 0 {
		target += "?" + cl.query.Encode()
	}
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(actx, cl.method, target, body)
	if err != nil {
		return nil, false, fmt.Errorf("building request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	req.Header.Set("User-Agent", c.userAgent)
	req.Header.Set("Accept", "application/json")
	if cl.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}

	hresp, err := c.hc.Do(req)
	if err != nil {
		return nil, gotConn.Load(), c.attemptError(ctx, actx, stripURLError(err))
	}
	defer hresp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(hresp.Body, maxResponseBytes+1))
	if err != nil {
		if hresp.StatusCode == http.StatusTooManyRequests {
			// The status alone says the request was refused.
			return &response{status: hresp.StatusCode, body: b}, true, nil
		}
		return nil, true, fmt.Errorf("reading HTTP %d response: %w", hresp.StatusCode, c.attemptError(ctx, actx, err))
	}
	if len(b) > maxResponseBytes {
		return nil, true, fmt.Errorf("HTTP %d response larger than %d bytes", hresp.StatusCode, maxResponseBytes)
	}
	return &response{status: hresp.StatusCode, body: b}, true, nil
}

// attemptError says when an attempt hit RequestTimeout rather than the
// caller's own deadline, which both surface as context.DeadlineExceeded.
func (c *Client) attemptError(ctx, actx context.Context, err error) error {
	if ctx.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("no answer within request_timeout %s: %w", c.timeout, err)
	}
	return err
}

// apiError turns an answer into an *APIError.
func (c *Client) apiError(cl *call, resp *response) *APIError {
	return c.red.parseAPIError(cl.method, cl.tmpl, resp.status, resp.body)
}

// unexpected reports a 2xx body the client cannot understand. The body is
// not quoted: a 2xx answer is real data (instance tokens, env values), and
// a truncated one cannot even be scrubbed field by field.
func (c *Client) unexpected(cl *call, resp *response, what string) error {
	return fmt.Errorf("vast.ai %s %s: HTTP %d: %w: %s (%d-byte body withheld)",
		cl.method, cl.tmpl, resp.status, ErrUnexpectedResponse, what, len(resp.body))
}

// wrap hides the API key from err's text; all exported methods return
// errors through it.
func (c *Client) wrap(err error) error {
	if err == nil {
		return nil
	}
	return &redactedError{err: err, r: c.red}
}

// decodeObject checks the status and parses a 2xx body as a JSON object,
// turning "success": false (or an "error" code without "success": true)
// into an *APIError.
func (c *Client) decodeObject(cl *call, resp *response) (map[string]json.RawMessage, error) {
	if !resp.ok() {
		return nil, c.apiError(cl, resp)
	}
	m, err := parseObject(resp.body)
	if err != nil {
		return nil, c.unexpected(cl, resp, err.Error())
	}
	if failed(m) {
		return nil, c.apiError(cl, resp)
	}
	return m, nil
}

// parseObject parses b as a JSON object (null is not an object).
func parseObject(b []byte) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, errors.New("body is not a JSON object")
	}
	if m == nil {
		return nil, errors.New("body is null")
	}
	return m, nil
}

// failed reports whether a 2xx body declares a failure.
func failed(m map[string]json.RawMessage) bool {
	if isFalse(m["success"]) {
		return true
	}
	return !isTrue(m["success"]) && flexString(m["error"]) != ""
}

// isFalse reports whether raw is an explicit false (false, 0, "false").
// A missing or null value is not false: several endpoints omit "success".
func isFalse(raw json.RawMessage) bool {
	switch strings.ToLower(strings.Trim(strings.TrimSpace(string(raw)), `"`)) {
	case "false", "0":
		return true
	}
	return false
}

// isTrue reports whether raw is an explicit true (true, 1, "true").
func isTrue(raw json.RawMessage) bool {
	switch strings.ToLower(strings.Trim(strings.TrimSpace(string(raw)), `"`)) {
	case "true", "1":
		return true
	}
	return false
}

func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

func validID(what string, id int64) error {
	if id <= 0 {
		return fmt.Errorf("vastclient: invalid %s %d", what, id)
	}
	return nil
}

func instancePath(id int64) string {
	return "/api/v0/instances/" + strconv.FormatInt(id, 10) + "/"
}

// ListOptions narrows ListInstances.
type ListOptions struct {
	// Label, when set, asks vast.ai to return only instances with exactly
	// this label. Ownership must still be checked by the caller.
	Label string
	// Labels, when set, asks for the instances whose label is exactly one
	// of these (select_filters {"label": {"in": [...]}}). It cannot be
	// combined with Label. The v1 list has no prefix operator, so a
	// caller that needs a label prefix (the plugin's "cv:") must list the
	// whole account.
	Labels []string
	// Columns, when set, asks for these columns only (select_cols), which
	// shrinks the pages but not their number. InstanceColumns are the
	// columns Instance decodes. Whether vast.ai serves computed columns
	// (dph_total, num_gpus) under select_cols is unverified.
	Columns []string
}

// InstanceColumns are the instance columns the client decodes, for
// ListOptions.Columns.
var InstanceColumns = []string{
	"id", "actual_status", "intended_status", "cur_state", "next_state", "status_msg", "label",
	"image_uuid", "image_runtype", "template_hash_id", "extra_env", "onstart", "image_args",
	"jupyter_token", "public_ipaddr", "ports", "ssh_host", "ssh_port", "machine_id", "host_id",
	"num_gpus", "gpu_name", "gpu_ram", "gpu_util", "gpu_temp", "disk_space", "geolocation",
	"dph_total", "storage_total_cost", "is_bid", "start_date", "end_date", "reliability2",
}

// query builds the list's query parameters.
func (o ListOptions) query() (url.Values, error) {
	q := url.Values{"limit": {strconv.Itoa(listPageLimit)}}
	var filter map[string]map[string]any
	switch {
	case o.Label != "" && len(o.Labels) > 0:
		return nil, errors.New("vastclient: list options: Label and Labels are mutually exclusive")
	case o.Label != "":
		filter = map[string]map[string]any{"label": {"eq": o.Label}}
	case len(o.Labels) > 0:
		for _, l := range o.Labels {
			if l == "" {
				return nil, errors.New("vastclient: list options: Labels has an empty label")
			}
		}
		filter = map[string]map[string]any{"label": {"in": o.Labels}}
	}
	if filter != nil {
		f, err := json.Marshal(filter)
		if err != nil {
			return nil, fmt.Errorf("vastclient: encoding label filter: %w", err)
		}
		q.Set("select_filters", string(f))
	}
	if len(o.Columns) > 0 {
		cols := o.Columns
		if !slices.Contains(cols, "id") {
			// Rows without an id are skipped: never ask for such rows.
			cols = append([]string{"id"}, cols...)
		}
		c, err := json.Marshal(cols)
		if err != nil {
			return nil, fmt.Errorf("vastclient: encoding select_cols: %w", err)
		}
		q.Set("select_cols", string(c))
	}
	return q, nil
}

// ListResult is a complete listing of the account's instances.
type ListResult struct {
	// Instances holds every instance with a valid id, in server order.
	Instances []Instance
	// Skipped counts rows dropped because their id was missing or invalid.
	Skipped int
	// Pages is the number of pages fetched.
	Pages int
}

// listPage is one decoded page of GET /api/v1/instances/.
type listPage struct {
	instances []Instance
	skipped   int
	next      string
}

// errSuccessFalse marks a page whose body says "success": false, which the
// caller turns into an *APIError built from the whole body.
var errSuccessFalse = errors.New(`"success" is false`)

// decodeListPage decodes one page of the v1 list. Anything that does not
// positively look like a list page is an error, because a failed listing
// mistaken for an empty one leaves instances billing unseen.
func decodeListPage(body []byte) (*listPage, error) {
	m, err := parseObject(body)
	if err != nil {
		return nil, err
	}
	if failed(m) {
		return nil, errSuccessFalse
	}
	raw, ok := m["instances"]
	if !ok {
		return nil, errors.New(`no "instances" key`)
	}
	page := &listPage{}
	if isNull(raw) {
		// Only a page that also claims zero instances may be read as empty.
		if t, ok := m["total_instances"]; ok && !isNull(t) {
			if n, ok := flexFloatOK(t); !ok || n != 0 {
				return nil, errors.New(`"instances" is null but "total_instances" is not 0`)
			}
		}
	} else {
		var rows []json.RawMessage
		if err := json.Unmarshal(raw, &rows); err != nil {
			return nil, errors.New(`"instances" is not an array`)
		}
		page.instances = make([]Instance, 0, len(rows))
		for _, row := range rows {
			var in Instance
			if in.UnmarshalJSON(row) != nil || !in.Valid() {
				page.skipped++
				continue
			}
			page.instances = append(page.instances, in)
		}
	}
	if raw, ok := m["next_token"]; ok && !isNull(raw) {
		var s string
		var n json.Number
		switch {
		case json.Unmarshal(raw, &s) == nil:
			page.next = s
		case json.Unmarshal(raw, &n) == nil:
			page.next = n.String()
		default:
			return nil, errors.New(`"next_token" is neither a string nor null`)
		}
	}
	return page, nil
}

// ListInstances returns every instance of the account, following the v1
// list's cursor until the last page. It fails as a whole if any page fails:
// a listing is either complete or an error, never silently short or empty.
func (c *Client) ListInstances(ctx context.Context, opts ListOptions) (*ListResult, error) {
	q, err := opts.query()
	if err != nil {
		return nil, err
	}
	res := &ListResult{Instances: []Instance{}}
	seenToken := map[string]bool{}
	seenID := map[int64]bool{}
	for {
		if res.Pages >= maxListPages {
			return nil, c.wrap(fmt.Errorf("vast.ai GET /api/v1/instances/: %w: more than %d pages", ErrUnexpectedResponse, maxListPages))
		}
		cl := &call{ep: EndpointList, method: http.MethodGet, tmpl: "/api/v1/instances/", path: "/api/v1/instances/", query: q}
		resp, err := c.do(ctx, cl)
		if err != nil {
			return nil, c.wrap(err)
		}
		if !resp.ok() {
			return nil, c.wrap(c.apiError(cl, resp))
		}
		page, err := decodeListPage(resp.body)
		if errors.Is(err, errSuccessFalse) {
			return nil, c.wrap(c.apiError(cl, resp))
		}
		if err != nil {
			return nil, c.wrap(c.unexpected(cl, resp, fmt.Sprintf("page %d: %v", res.Pages+1, err)))
		}
		res.Pages++
		res.Skipped += page.skipped
		for _, in := range page.instances {
			// Keyset pagination should not repeat rows, but an instance
			// counted twice would distort capacity decisions.
			if !seenID[in.ID] {
				seenID[in.ID] = true
				res.Instances = append(res.Instances, in)
			}
		}
		c.learnInstances(page.instances)
		if page.next == "" {
			return res, nil
		}
		if seenToken[page.next] {
			return nil, c.wrap(fmt.Errorf("vast.ai GET /api/v1/instances/: %w: next_token repeated after page %d", ErrUnexpectedResponse, res.Pages))
		}
		seenToken[page.next] = true
		q = cloneValues(q)
		q.Set("after_token", page.next)
	}
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// ShowInstance returns one instance. A destroyed or unknown instance gives
// an error matching ErrNotFound: vast.ai answers those with HTTP 200 and
// {"instances": null}, or with 404 not_found.
func (c *Client) ShowInstance(ctx context.Context, id int64) (*Instance, error) {
	if err := validID("instance id", id); err != nil {
		return nil, err
	}
	cl := &call{ep: EndpointShow, method: http.MethodGet, tmpl: "/api/v0/instances/{id}/", path: instancePath(id)}
	resp, err := c.do(ctx, cl)
	if err != nil {
		return nil, c.wrap(fmt.Errorf("show instance %d: %w", id, err))
	}
	in, err := c.decodeShow(cl, resp, id)
	if err != nil {
		return nil, c.wrap(fmt.Errorf("show instance %d: %w", id, err))
	}
	c.red.add(true, appendInstanceSecrets(nil, in)...)
	return in, nil
}

func (c *Client) decodeShow(cl *call, resp *response, id int64) (*Instance, error) {
	m, err := c.decodeObject(cl, resp)
	if err != nil {
		return nil, err
	}
	raw, ok := m["instances"]
	if !ok {
		return nil, c.unexpected(cl, resp, `no "instances" key`)
	}
	notFound := func() error {
		e := c.apiError(cl, resp)
		e.Msg = `instance not found ("instances" is empty)`
		e.also = ErrNotFound
		return e
	}
	t := bytes.TrimSpace(raw)
	switch {
	case isNull(t):
		return nil, notFound()
	case t[0] == '{':
		var obj map[string]json.RawMessage
		if json.Unmarshal(t, &obj) != nil {
			return nil, c.unexpected(cl, resp, `"instances" is not a valid object`)
		}
		if len(obj) == 0 {
			return nil, notFound()
		}
		return c.matchInstance(cl, resp, t, id)
	case t[0] == '[':
		var rows []json.RawMessage
		if json.Unmarshal(t, &rows) != nil {
			return nil, c.unexpected(cl, resp, `"instances" is not a valid array`)
		}
		if len(rows) == 0 {
			return nil, notFound()
		}
		for _, row := range rows {
			var in Instance
			if in.UnmarshalJSON(row) == nil && in.ID == id {
				return &in, nil
			}
		}
		if len(rows) == 1 {
			return c.matchInstance(cl, resp, rows[0], id)
		}
		return nil, c.unexpected(cl, resp, fmt.Sprintf(`"instances" lists %d instances, none with id %d`, len(rows), id))
	}
	return nil, c.unexpected(cl, resp, `"instances" is neither an object nor null`)
}

// matchInstance decodes a shown instance. The docs' own examples omit "id"
// (it is the id that was asked for), but an object naming another id is
// refused: acting on it could stop or destroy the wrong instance.
func (c *Client) matchInstance(cl *call, resp *response, raw json.RawMessage, id int64) (*Instance, error) {
	var in Instance
	if err := in.UnmarshalJSON(raw); err != nil {
		return nil, c.unexpected(cl, resp, `"instances" is not an object`)
	}
	if in.ID == 0 {
		in.ID = id
	}
	if in.ID != id {
		return nil, c.unexpected(cl, resp, fmt.Sprintf("asked for instance %d, got %d", id, in.ID))
	}
	return &in, nil
}

// CreateRequest is the body of a create (rent) request.
type CreateRequest struct {
	// ClientID defaults to "me".
	ClientID string `json:"client_id"`
	// Image is the Docker image; required unless TemplateHashID is set.
	Image string `json:"image,omitempty"`
	// TemplateHashID selects a template; request fields override it.
	TemplateHashID string `json:"template_hash_id,omitempty"`
	// Label marks the instance so that it can be found again; at most 256
	// characters. Always set it: it is the only way to recover an instance
	// whose create answer was lost.
	Label string `json:"label,omitempty"`
	// Disk is the disk size in GB; it cannot be changed later.
	Disk float64 `json:"disk,omitempty"`
	// Runtype is for example "ssh_direct", "ssh_proxy" or "args".
	Runtype string `json:"runtype,omitempty"`
	// Env holds environment variables and Docker options such as
	// "-p 8000:8000": "1". It is always sent as a JSON object.
	Env map[string]string `json:"env"`
	// Onstart is a script run after the vast.ai entrypoint.
	Onstart string `json:"onstart,omitempty"`
	// Args are the entrypoint arguments for runtype "args".
	Args []string `json:"args,omitempty"`
	// Price, when set, is a bid in $/hour and makes the instance
	// interruptible. Leave it nil for on-demand.
	Price *float64 `json:"price,omitempty"`
	// TargetState is "running" or "stopped"; empty lets vast.ai decide.
	TargetState string `json:"target_state,omitempty"`
	// CancelUnavail, when true, makes vast.ai fail (410 no_such_ask) rather
	// than create a stopped instance on a machine that cannot start it now.
	CancelUnavail *bool `json:"cancel_unavail,omitempty"`
}

// MarshalJSON fills the defaults vast.ai expects: client_id "me" and an env
// object even when empty.
func (r CreateRequest) MarshalJSON() ([]byte, error) {
	type plain CreateRequest
	p := plain(r)
	if p.ClientID == "" {
		p.ClientID = "me"
	}
	if p.Env == nil {
		p.Env = map[string]string{}
	}
	return json.Marshal(p)
}

func (r *CreateRequest) validate() error {
	if n := utf8.RuneCountInString(r.Label); n > MaxCreateLabelLen {
		return fmt.Errorf("vastclient: label is %d characters long; vast.ai accepts at most %d at creation", n, MaxCreateLabelLen)
	}
	if r.Image == "" && r.TemplateHashID == "" {
		return errors.New("vastclient: create needs an image or a template_hash_id")
	}
	for k := range r.Env {
		if k == "" {
			return errors.New("vastclient: env has an empty key")
		}
	}
	if r.Price != nil && !(*r.Price > 0) {
		return fmt.Errorf("vastclient: bid price %v must be positive", *r.Price)
	}
	if r.Disk < 0 {
		return fmt.Errorf("vastclient: disk %v GB is negative", r.Disk)
	}
	return nil
}

// CreateResult is the answer to a create request.
type CreateResult struct {
	// InstanceID is the new instance's id ("new_contract"), distinct from
	// the offer id.
	InstanceID int64 `json:"new_contract"`
	// Success is vast.ai's "success" flag. It can be false although an
	// instance was created; InstanceID is what counts.
	Success bool `json:"success"`
	// InstanceAPIKey is the restricted per-instance key. It is a secret,
	// excluded from JSON encoding.
	InstanceAPIKey string `json:"-"`
}

// hasNewContract reports whether body names a created instance.
func hasNewContract(body []byte) bool {
	m, err := parseObject(body)
	return err == nil && flexInt(m["new_contract"]) > 0
}

// CreateInstance rents the offer offerID.
//
// Create is not idempotent. It is retried only when vast.ai certainly did
// nothing: a 429 answer, or a failure before any connection was made. On a
// timeout, a reset connection, a 5xx or an unreadable 2xx it returns an
// error matching ErrCreateUncertain, and the caller must look the instance
// up by label. A gone offer gives an error matching ErrNoSuchAsk.
//
// Whenever the answer carries a new instance id, the result is returned with
// a nil error, even if vast.ai also said "success": false: the instance
// exists and bills until destroyed.
func (c *Client) CreateInstance(ctx context.Context, offerID int64, req CreateRequest) (*CreateResult, error) {
	if err := validID("offer id", offerID); err != nil {
		return nil, err
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	// vast.ai echoes the request's env (WEB_PASSWORD, HF_TOKEN, ...) in
	// messages that are not always JSON: know the values before sending.
	for k, v := range req.Env {
		if !strings.HasPrefix(k, "-") {
			c.red.add(false, v)
		}
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("vastclient: encoding create request: %w", err)
	}
	cl := &call{
		ep: EndpointCreate, method: http.MethodPut, tmpl: "/api/v0/asks/{offer_id}/",
		path: "/api/v0/asks/" + strconv.FormatInt(offerID, 10) + "/", body: body, create: true,
	}
	resp, err := c.do(ctx, cl)
	if err != nil {
		return nil, c.wrap(fmt.Errorf("create from offer %d: %w", offerID, err))
	}
	res, err := c.decodeCreate(cl, resp)
	if err != nil {
		return nil, c.wrap(fmt.Errorf("create from offer %d: %w", offerID, err))
	}
	return res, nil
}

func (c *Client) decodeCreate(cl *call, resp *response) (*CreateResult, error) {
	m, perr := parseObject(resp.body)
	if perr == nil {
		if id := flexInt(m["new_contract"]); id > 0 {
			res := &CreateResult{
				InstanceID:     id,
				Success:        isTrue(m["success"]),
				InstanceAPIKey: flexString(m["instance_api_key"]),
			}
			c.red.add(true, res.InstanceAPIKey)
			if !res.Success || !resp.ok() {
				e := c.apiError(cl, resp)
				c.log.Warn("vast.ai create reported a failure but named a new instance; tracking it",
					zap.Int64("instance_id", id), zap.Int("status", resp.status),
					zap.String("code", e.Code), zap.String("msg", e.Msg))
			}
			return res, nil
		}
	}
	switch {
	case resp.status >= 500:
		e := c.apiError(cl, resp)
		e.also = ErrCreateUncertain
		return nil, e
	case !resp.ok():
		return nil, c.apiError(cl, resp)
	case perr != nil:
		return nil, fmt.Errorf("%w: %w", ErrCreateUncertain, c.unexpected(cl, resp, perr.Error()))
	case failed(m):
		return nil, c.apiError(cl, resp)
	}
	return nil, fmt.Errorf("%w: %w", ErrCreateUncertain, c.unexpected(cl, resp, `no "new_contract" in a successful answer`))
}

// DestroyInstance destroys an instance, stopping all its charges. vast.ai
// destroys asynchronously: confirm with ShowInstance (ErrNotFound) and
// ListInstances. An unknown id gives an error matching ErrNotFound.
func (c *Client) DestroyInstance(ctx context.Context, id int64) error {
	if err := validID("instance id", id); err != nil {
		return err
	}
	cl := &call{ep: EndpointDestroy, method: http.MethodDelete, tmpl: "/api/v0/instances/{id}/", path: instancePath(id), body: []byte("{}")}
	if err := c.action(ctx, cl); err != nil {
		return c.wrap(fmt.Errorf("destroy instance %d: %w", id, err))
	}
	return nil
}

// SetLabel sets an instance's label ("" clears it). Labels longer than 1024
// characters are refused without a request.
func (c *Client) SetLabel(ctx context.Context, id int64, label string) error {
	if err := validID("instance id", id); err != nil {
		return err
	}
	if n := utf8.RuneCountInString(label); n > MaxLabelLen {
		return fmt.Errorf("vastclient: label is %d characters long; vast.ai accepts at most %d", n, MaxLabelLen)
	}
	body, err := json.Marshal(map[string]string{"label": label})
	if err != nil {
		return fmt.Errorf("vastclient: encoding label: %w", err)
	}
	cl := &call{ep: EndpointManage, method: http.MethodPut, tmpl: "/api/v0/instances/{id}/", path: instancePath(id), body: body}
	if err := c.action(ctx, cl); err != nil {
		return c.wrap(fmt.Errorf("label instance %d: %w", id, err))
	}
	return nil
}

// Instance states accepted by SetState.
const (
	// StateRunning starts a stopped instance.
	StateRunning = "running"
	// StateStopped stops an instance; its disk keeps billing.
	StateStopped = "stopped"
)

// SetState starts (StateRunning) or stops (StateStopped) an instance. A
// stopped instance still bills its disk.
func (c *Client) SetState(ctx context.Context, id int64, state string) error {
	if err := validID("instance id", id); err != nil {
		return err
	}
	if state != StateRunning && state != StateStopped {
		return fmt.Errorf("vastclient: invalid state %q (want %q or %q)", state, StateRunning, StateStopped)
	}
	body, err := json.Marshal(map[string]string{"state": state})
	if err != nil {
		return fmt.Errorf("vastclient: encoding state: %w", err)
	}
	cl := &call{ep: EndpointManage, method: http.MethodPut, tmpl: "/api/v0/instances/{id}/", path: instancePath(id), body: body}
	if err := c.action(ctx, cl); err != nil {
		return c.wrap(fmt.Errorf("set instance %d %s: %w", id, state, err))
	}
	return nil
}

// action performs a call whose answer is just {"success": true}.
func (c *Client) action(ctx context.Context, cl *call) error {
	resp, err := c.do(ctx, cl)
	if err != nil {
		return err
	}
	_, err = c.decodeObject(cl, resp)
	return err
}

// User is the account behind the API key.
type User struct {
	// ID is the vast.ai user id.
	ID int64 `json:"id"`
	// Email is the account's e-mail address.
	Email string `json:"email"`
	// Credit is the prepaid balance in dollars; use it for a balance guard.
	Credit float64 `json:"credit"`
	// Balance is the invoiced balance in dollars.
	Balance float64 `json:"balance"`
}

// UnmarshalJSON decodes a user tolerantly, like Instance.
func (u *User) UnmarshalJSON(b []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*u = User{
		ID:      flexInt(m["id"]),
		Email:   flexString(m["email"]),
		Credit:  flexFloat(m["credit"]),
		Balance: flexFloat(m["balance"]),
	}
	return nil
}

// CurrentUser returns the account behind the API key; it is also a cheap way
// to check the key.
func (c *Client) CurrentUser(ctx context.Context) (*User, error) {
	cl := &call{ep: EndpointUser, method: http.MethodGet, tmpl: "/api/v0/users/current/", path: "/api/v0/users/current/"}
	resp, err := c.do(ctx, cl)
	if err != nil {
		return nil, c.wrap(err)
	}
	if _, err := c.decodeObject(cl, resp); err != nil {
		return nil, c.wrap(err)
	}
	var u User
	if err := u.UnmarshalJSON(resp.body); err != nil {
		return nil, c.wrap(c.unexpected(cl, resp, err.Error()))
	}
	return &u, nil
}
