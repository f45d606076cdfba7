package mockprovider

import "strings"

// ceilTokens is the mock's tokenizer: one token per started 4 bytes.
func ceilTokens(n int) int64 { return int64((n + 3) / 4) }

// naturalOutput is the output length the mock "wants" for a prompt whose last
// user message has the given raw JSON content: 5..200 tokens.
func naturalOutput(lastUser []byte) int64 {
	return 5 + int64(fnvHash(lastUser)%196)
}

// outputPlan decides how many tokens to emit and whether max tokens cut the
// reply. maxTokens < 0 means no cap; forced < 0 means no header override.
func outputPlan(lastUser []byte, forced, maxTokens int64) (n int64, capped bool) {
	n = naturalOutput(lastUser)
	if forced >= 0 {
		n = forced
	}
	if maxTokens >= 0 && n >= maxTokens {
		return maxTokens, true
	}
	return n, false
}

var vocabulary = strings.Fields(`the a of to and in is it that for on with as this was by at
from be are or an have not but which can will one all their there been more when
cache token budget stream model prompt tenant limit request reply window usage
river mountain lantern harbor meadow copper velvet orbit signal quartz ember
gentle rapid quiet bright narrow distant steady hollow amber silver`)

// words returns n deterministic words seeded by seed; each is one "token".
// The first is capitalised and the last ends the sentence, without adding
// words, so the count stays exactly n.
func words(seed uint64, n int64) []string {
	out := make([]string, 0, n)
	r := rng{s: seed}
	for i := int64(0); i < n; i++ {
		w := vocabulary[r.intn(len(vocabulary))]
		if i == 0 {
			w = strings.ToUpper(w[:1]) + w[1:]
		}
		if i == n-1 {
			w += "."
		}
		out = append(out, w)
	}
	return out
}

// deltaTexts groups words into stream deltas of 1–4 words, the later ones
// with a leading space, so that concatenating them gives strings.Join(ws, " ").
func deltaTexts(seed uint64, ws []string) []string {
	r := rng{s: seed ^ 0xd1b54a32d192ed03}
	var out []string
	for i := 0; i < len(ws); {
		k := 1 + r.intn(4)
		if i+k > len(ws) {
			k = len(ws) - i
		}
		s := strings.Join(ws[i:i+k], " ")
		if i > 0 {
			s = " " + s
		}
		out = append(out, s)
		i += k
	}
	return out
}
