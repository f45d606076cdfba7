package sim

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// HTTPUpstream forwards to a base URL with an *http.Client and streams the
// response body back. It plays Envoy's router with a host rewrite to the
// upstream cluster.
type HTTPUpstream struct {
	// Base is the upstream URL; the request path is appended to its path.
	Base *url.URL
	// Client defaults to a client whose transport does not add
	// accept-encoding (so bodies are passed through byte-exact).
	Client *http.Client
	// KeepAuthority sends the downstream :authority as Host instead of
	// rewriting it to Base.Host.
	KeepAuthority bool
}

// NewHTTPUpstream parses base and returns an HTTPUpstream using client (nil
// for the default pass-through client).
func NewHTTPUpstream(base string, client *http.Client) (*HTTPUpstream, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("sim: upstream URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("sim: upstream URL %q must be http(s)://host", base)
	}
	return &HTTPUpstream{Base: u, Client: client}, nil
}

var defaultClient = &http.Client{Transport: &http.Transport{
	Proxy:              nil,
	DisableCompression: true,
	ForceAttemptHTTP2:  false,
	MaxIdleConns:       256,
	// Per-host idle pool sized for the load harness' concurrency.
	MaxIdleConnsPerHost: 256,
}}

// RoundTrip implements Upstream.
func (u *HTTPUpstream) RoundTrip(ctx context.Context, r *UpstreamRequest) (*UpstreamResponse, error) {
	target := *u.Base
	path, query, _ := strings.Cut(r.Path, "?")
	target.Path = strings.TrimSuffix(u.Base.Path, "/") + path
	target.RawPath = ""
	target.RawQuery = query
	var body io.Reader
	if r.Body != nil {
		body = r.Body
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, target.String(), body)
	if err != nil {
		return nil, fmt.Errorf("sim: build upstream request: %w", err)
	}
	req.ContentLength = 0
	if body != nil {
		req.ContentLength = -1 // chunked unless content-length survived the filter
	}
	for _, h := range r.Headers {
		switch {
		case hopByHop(h.Name):
		case h.Name == "content-length":
			if n, err := strconv.ParseInt(h.Value, 10, 64); err == nil && body != nil {
				req.ContentLength = n
			}
		case h.Name == "host":
		default:
			req.Header.Add(h.Name, h.Value)
		}
	}
	if u.KeepAuthority && r.Authority != "" {
		req.Host = r.Authority
	}
	if body != nil && req.ContentLength == 0 {
		req.Body = http.NoBody
	}
	c := u.Client
	if c == nil {
		c = defaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("sim: upstream: %w", err)
	}
	out := &UpstreamResponse{Status: resp.StatusCode, Headers: FromHTTPHeader(resp.Header), Body: resp.Body}
	if resp.ContentLength >= 0 {
		out.Headers = append(out.Headers, Header{"content-length", strconv.FormatInt(resp.ContentLength, 10)})
	}
	out.Trailers = func() []Header { return FromHTTPHeader(resp.Trailer) }
	return out, nil
}

// FromHTTPHeader converts a net/http header to lower-case Header entries,
// sorted by name (net/http does not keep arrival order), values in order.
func FromHTTPHeader(h http.Header) []Header {
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	var out []Header
	for _, k := range names {
		lk := strings.ToLower(k)
		if hopByHop(lk) || lk == "content-length" {
			continue
		}
		for _, v := range h[k] {
			out = append(out, Header{lk, v})
		}
	}
	return out
}
