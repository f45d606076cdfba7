package e2e

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	anthoption "github.com/anthropics/anthropic-sdk-go/option"
	"github.com/openai/openai-go/v3"
	oaioption "github.com/openai/openai-go/v3/option"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
)

// attempt is one request as it reached the gateway, and its answer.
type attempt struct {
	arrived, answered time.Time
	status            int
	wait              time.Duration // what a denial advertised: retry-after-ms, else retry-after
}

// attemptLog is a front on the gateway that timestamps every request on
// its way in and every response on its way out.
type attemptLog struct {
	mu       sync.Mutex
	attempts []attempt
}

func (l *attemptLog) front(t *testing.T, gw string) *httptest.Server {
	target, _ := url.Parse(gw)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(r *http.Response) error {
		a := attempt{answered: time.Now(), status: r.StatusCode}
		if v, err := strconv.ParseFloat(r.Header.Get("retry-after-ms"), 64); err == nil {
			a.wait = time.Duration(v * float64(time.Millisecond))
		} else if v, err := strconv.ParseFloat(r.Header.Get("retry-after"), 64); err == nil {
			a.wait = time.Duration(v * float64(time.Second))
		}
		arrived, _ := r.Request.Context().Value(arrivedKey{}).(time.Time)
		a.arrived = arrived
		l.mu.Lock()
		l.attempts = append(l.attempts, a)
		l.mu.Unlock()
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), arrivedKey{}, time.Now())))
	}))
	t.Cleanup(srv.Close)
	return srv
}

type arrivedKey struct{}

func (l *attemptLog) take() []attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.attempts
	l.attempts = nil
	return out
}

// TestSDKRetryWaitsTheAdvertisedTime: with a concurrency limit of 1 and one
// slow stream holding the slot, a second request sent with an official SDK
// (OpenAI's, Anthropic's) and its default retries is denied with a
// retry-after, retried no sooner than that after each denial, and succeeds
// once the slot is free.
func TestSDKRetryWaitsTheAdvertisedTime(t *testing.T) {
	s := newStack(t, stackOptions{config: `
policies:
  default:
    limits: {requests_per_minute: 100000, tokens_per_minute: 100000000, concurrent: 1}
    budgets: [{window: month, usd: 1000}]
tenants:
  retry: {}
`})
	ctx := context.Background()
	gw, err := gateway.Start(ctx, gateway.Options{Listen: "127.0.0.1:0", Upstream: s.mock.URL(), Processor: s.procs[0].addr,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + gw.Addr()
	var log attemptLog
	front := log.front(t, base)

	// hold takes the tenant's one slot with a stream that would last about
	// 5 s (100 events, 50 ms apart) and returns once it has its headers.
	// The stream is let go — the client goes away, which frees the slot —
	// once the SDK's first retry has been denied too, so the second retry
	// is the one that succeeds, however loaded the machine; done is closed
	// when the slot's holder has gone.
	hold := func() (done chan struct{}, took *time.Duration) {
		body := `{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Tell me a long story."}]}`
		hctx, cancel := context.WithCancel(ctx)
		req, _ := http.NewRequestWithContext(hctx, "POST", base+"/v1/chat/completions", strings.NewReader(body))
		req.Header = http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer sk-test"}, "X-Tenant-Id": {"retry"},
			"X-Mock-Output-Tokens": {"400"}, "X-Mock-Chunk-Delay": {"50ms"}}
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("the holding stream: %v %v", err, resp)
		}
		done, took = make(chan struct{}), new(time.Duration)
		go func() {
			defer close(done)
			defer cancel()
			go func() {
				for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
					log.mu.Lock()
					n := len(log.attempts)
					log.mu.Unlock()
					if n >= 2 {
						break
					}
				}
				cancel()
			}()
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			*took = time.Since(start)
		}()
		return done, took
	}

	// check holds the attempts to the SDK's contract with tokenwarden.
	check := func(t *testing.T, sdk string, attempts []attempt, held time.Duration) {
		t.Helper()
		if len(attempts) != 3 {
			t.Fatalf("%s: %d attempts (%+v), want the SDK's default of 3: denied, denied, admitted", sdk, len(attempts), attempts)
		}
		for i, a := range attempts {
			last := i == len(attempts)-1
			switch {
			case last && a.status != 200:
				t.Errorf("%s: the last attempt got %d", sdk, a.status)
			case !last && (a.status != 429 || a.wait <= 0):
				t.Errorf("%s: attempt %d got %d advertising %v, want a 429 with a retry-after", sdk, i, a.status, a.wait)
			}
			if i == 0 {
				continue
			}
			prev := attempts[i-1]
			gap := a.arrived.Sub(prev.answered)
			// Only scheduling slack in the direction of waiting longer:
			// the retry may not arrive before the advertised time, to the
			// millisecond the header can express.
			if gap < prev.wait-time.Millisecond {
				t.Errorf("%s: attempt %d arrived %v after the denial that advertised %v", sdk, i, gap, prev.wait)
			}
			t.Logf("%s: attempt %d arrived %v after a denial advertising %v (the slot was held %v)", sdk, i, gap.Round(time.Millisecond), prev.wait, held.Round(time.Millisecond))
		}
	}

	t.Run("openai-go", func(t *testing.T) {
		done, took := hold()
		oai := openai.NewClient(oaioption.WithBaseURL(front.URL+"/v1/"), oaioption.WithAPIKey("sk-test"),
			oaioption.WithHeader("x-tenant-id", "retry")) // default retries
		c, err := oai.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-4o-mini",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")}})
		<-done
		if err != nil || c.Usage.CompletionTokens == 0 {
			t.Fatalf("the SDK gave up: %v", err)
		}
		check(t, "openai-go", log.take(), *took)
	})
	t.Run("anthropic-sdk-go", func(t *testing.T) {
		done, took := hold()
		ant := anthropic.NewClient(anthoption.WithBaseURL(front.URL), anthoption.WithAPIKey("sk-ant-test"),
			anthoption.WithHeader("x-tenant-id", "retry")) // default retries
		m, err := ant.Messages.New(ctx, anthropic.MessageNewParams{Model: "claude-haiku-4-5", MaxTokens: 50,
			Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Hello"))}})
		<-done
		if err != nil || m.Usage.OutputTokens == 0 {
			t.Fatalf("the SDK gave up: %v", err)
		}
		check(t, "anthropic-sdk-go", log.take(), *took)
	})
}
