package mockprovider

import "sync"

// servedCounts counts every answer by status, so a test can count what
// reached the provider (a 429 is not in the ledger: it consumed nothing).
type servedCounts struct {
	mu sync.Mutex
	n  map[int]int64
}

func (c *servedCounts) add(status int) {
	if status == 0 {
		status = 200 // nothing written explicitly: net/http answers 200
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[int]int64{}
	}
	c.n[status]++
}

// Served reports how many requests the provider answered with status, or
// with any status when status is 0.
func (p *Provider) Served(status int) int64 {
	p.served.mu.Lock()
	defer p.served.mu.Unlock()
	if status != 0 {
		return p.served.n[status]
	}
	var total int64
	for _, v := range p.served.n {
		total += v
	}
	return total
}
