package mockprovider

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"
	anthoption "github.com/anthropics/anthropic-sdk-go/option"
	"github.com/openai/openai-go/v3"
	oaioption "github.com/openai/openai-go/v3/option"
)

// These tests drive the mock with the official SDKs: they must parse every
// response, and the usage they report must equal the ledger.

func anthropicClient(s *Server) anthropic.Client {
	return anthropic.NewClient(anthoption.WithBaseURL(s.URL()), anthoption.WithAPIKey("sk-ant-test"),
		anthoption.WithMaxRetries(0), anthoption.WithRequestTimeout(30*time.Second))
}

func openaiClient(s *Server) openai.Client {
	return openai.NewClient(oaioption.WithBaseURL(s.URL()+"/v1/"), oaioption.WithAPIKey("sk-test"),
		oaioption.WithMaxRetries(0), oaioption.WithRequestTimeout(30*time.Second))
}

func sdkTokens(u anthropic.Usage) Tokens {
	return Tokens{
		InputTokens: u.InputTokens, OutputTokens: u.OutputTokens, CacheReadTokens: u.CacheReadInputTokens,
		CacheWrite5mTokens: u.CacheCreation.Ephemeral5mInputTokens, CacheWrite1hTokens: u.CacheCreation.Ephemeral1hInputTokens,
	}
}

func lastEntry(t *testing.T, s *Server, requestID string) LedgerEntry {
	t.Helper()
	led := s.Provider().Ledger()
	if len(led) == 0 {
		t.Fatal("empty ledger")
	}
	e := led[len(led)-1]
	if requestID != "" && e.RequestID != requestID {
		t.Fatalf("last ledger entry is %s, want %s", e.RequestID, requestID)
	}
	return e
}

// entryAfter waits for the ledger to grow past before and returns its last
// entry: an SDK may stop reading a stream (at an error event, at [DONE])
// before the handler has finished and written its entry.
func entryAfter(t *testing.T, s *Server, before int) LedgerEntry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(s.Provider().Ledger()) <= before && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	return lastEntry(t, s, "")
}

func anthropicParams() anthropic.MessageNewParams {
	return anthropic.MessageNewParams{
		Model:     "claude-sonnet-4-5",
		MaxTokens: 300,
		System: []anthropic.TextBlockParam{{
			Text:         strings.Repeat("You are a careful assistant. ", 200),
			CacheControl: anthropic.NewCacheControlEphemeralParam(),
		}},
		Messages: []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Hello there"))},
	}
}

func TestAnthropicSDK(t *testing.T) {
	s := startMock(t, Options{})
	client := anthropicClient(s)
	ctx := context.Background()

	t.Run("json", func(t *testing.T) {
		var raw *http.Response
		for round := range 2 { // a cache write, then a read
			msg, err := client.Messages.New(ctx, anthropicParams(), anthoption.WithResponseInto(&raw))
			if err != nil {
				t.Fatal(err)
			}
			e := lastEntry(t, s, raw.Header.Get("request-id"))
			if got := sdkTokens(msg.Usage); got != e.Reported || got != e.Computed {
				t.Errorf("SDK usage %+v, ledger %+v", got, e.Reported)
			}
			if (round == 0) != (msg.Usage.CacheCreationInputTokens > 0) || (round == 1) != (msg.Usage.CacheReadInputTokens > 0) {
				t.Errorf("round %d: usage %+v", round, msg.Usage)
			}
			if msg.StopReason != anthropic.StopReasonEndTurn || len(msg.Content) != 1 ||
				int64(len(strings.Fields(msg.Content[0].Text))) != msg.Usage.OutputTokens {
				t.Errorf("message %+v", msg)
			}
		}
	})

	for _, knob := range []string{"", "x-mock-usage-on-delta-only", "x-mock-split"} {
		t.Run("stream "+knob, func(t *testing.T) {
			var opts []anthoption.RequestOption
			switch knob {
			case "x-mock-usage-on-delta-only":
				opts = append(opts, anthoption.WithHeader(knob, "true"))
			case "x-mock-split":
				opts = append(opts, anthoption.WithHeader(knob, "random"))
			}
			before := len(s.Provider().Ledger())
			stream := client.Messages.NewStreaming(ctx, anthropicParams(), opts...)
			var msg anthropic.Message
			for stream.Next() {
				if err := msg.Accumulate(stream.Current()); err != nil {
					t.Fatal(err)
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			e := entryAfter(t, s, before)
			got := sdkTokens(msg.Usage)
			if knob == "x-mock-usage-on-delta-only" {
				// The split by TTL exists only on message_start; the SDK sees
				// cache_creation_input_tokens without it, the ledger puts it on 5m.
				got.CacheWrite5mTokens = msg.Usage.CacheCreationInputTokens - got.CacheWrite1hTokens
			}
			if got != e.Reported || e.Cut || !e.Complete {
				t.Errorf("SDK usage %+v, ledger %+v", got, e)
			}
			if int64(len(strings.Fields(msg.Content[0].Text))) != msg.Usage.OutputTokens {
				t.Errorf("accumulated %q for %d output tokens", msg.Content[0].Text, msg.Usage.OutputTokens)
			}
		})
	}

	t.Run("mid-stream error", func(t *testing.T) {
		before := len(s.Provider().Ledger())
		stream := client.Messages.NewStreaming(ctx, anthropicParams(), anthoption.WithHeader("x-mock-error-after", "5"))
		n := 0
		for stream.Next() {
			n++
		}
		var apiErr *anthropic.Error
		if err := stream.Err(); !errors.As(err, &apiErr) || !strings.Contains(apiErr.Error(), "overloaded_error") {
			t.Errorf("stream error %v", err)
		}
		// Five events went out; the SDK does not surface the ping.
		if e := entryAfter(t, s, before); n != 4 || !e.Cut {
			t.Errorf("%d events before the error; ledger %+v", n, e)
		}
	})

	t.Run("scripted 529", func(t *testing.T) {
		_, err := client.Messages.New(ctx, anthropicParams(), anthoption.WithHeader("x-mock-status", "529"))
		var apiErr *anthropic.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 529 || !strings.Contains(apiErr.Error(), "overloaded_error") {
			t.Errorf("error %v", err)
		}
	})

	t.Run("count tokens", func(t *testing.T) {
		p := anthropicParams()
		res, err := client.Messages.CountTokens(ctx, anthropic.MessageCountTokensParams{
			Model: p.Model, Messages: p.Messages,
			System: anthropic.MessageCountTokensParamsSystemUnion{OfTextBlockArray: p.System},
		})
		if err != nil {
			t.Fatal(err)
		}
		e := lastEntry(t, s, "")
		if total := e.Computed.Accounting().TotalInputTokens(); res.InputTokens != total {
			t.Errorf("count_tokens %d, last request's total input %d", res.InputTokens, total)
		}
	})
}

func TestOpenAISDK(t *testing.T) {
	s := startMock(t, Options{})
	client := openaiClient(s)
	ctx := context.Background()
	params := openai.ChatCompletionNewParams{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("Be brief."), openai.UserMessage("Hello there")},
	}

	t.Run("json", func(t *testing.T) {
		var raw *http.Response
		res, err := client.Chat.Completions.New(ctx, params, oaioption.WithResponseInto(&raw))
		if err != nil {
			t.Fatal(err)
		}
		e := lastEntry(t, s, raw.Header.Get("x-request-id"))
		if res.Usage.PromptTokens != e.Reported.InputTokens || res.Usage.CompletionTokens != e.Reported.OutputTokens ||
			res.Usage.TotalTokens != res.Usage.PromptTokens+res.Usage.CompletionTokens {
			t.Errorf("SDK usage %+v, ledger %+v", res.Usage, e.Reported)
		}
		if int64(len(strings.Fields(res.Choices[0].Message.Content))) != res.Usage.CompletionTokens {
			t.Errorf("content %q", res.Choices[0].Message.Content)
		}
	})

	t.Run("stream", func(t *testing.T) {
		p := params
		p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		before := len(s.Provider().Ledger())
		stream := client.Chat.Completions.NewStreaming(ctx, p, oaioption.WithHeader("x-mock-split", "random"))
		var acc openai.ChatCompletionAccumulator
		for stream.Next() {
			acc.AddChunk(stream.Current())
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		e := entryAfter(t, s, before)
		if acc.Usage.PromptTokens != e.Reported.InputTokens || acc.Usage.CompletionTokens != e.Reported.OutputTokens || e.Cut || !e.Complete {
			t.Errorf("SDK usage %+v, ledger %+v", acc.Usage, e)
		}
		if int64(len(strings.Fields(acc.Choices[0].Message.Content))) != acc.Usage.CompletionTokens {
			t.Errorf("accumulated %q", acc.Choices[0].Message.Content)
		}
	})

	t.Run("mid-stream error", func(t *testing.T) {
		p := params
		p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		stream := client.Chat.Completions.NewStreaming(ctx, p, oaioption.WithHeader("x-mock-error-after", "2"))
		for stream.Next() {
		}
		if err := stream.Err(); err == nil || !strings.Contains(err.Error(), "overloaded") {
			t.Errorf("stream error %v", err)
		}
	})

	t.Run("scripted 429", func(t *testing.T) {
		_, err := client.Chat.Completions.New(ctx, params, oaioption.WithHeader("x-mock-status", "429"))
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 429 || apiErr.Code != "rate_limit_exceeded" {
			t.Errorf("error %v", err)
		}
	})
}
