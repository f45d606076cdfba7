package tcpproxy

import (
	"bufio"
	"net"
	"testing"
	"time"
)

func echo(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1024)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					c.Write(buf[:n])
				}
			}()
		}
	}()
	return lis.Addr().String()
}

func TestModes(t *testing.T) {
	p := Start(t, echo(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	line := func(timeout time.Duration) (string, error) {
		c.SetReadDeadline(time.Now().Add(timeout))
		return r.ReadString('\n')
	}
	c.Write([]byte("one\n"))
	if s, err := line(5 * time.Second); s != "one\n" || err != nil {
		t.Fatalf("pass: %q %v", s, err)
	}
	p.Set(Stall)
	c.Write([]byte("two\n"))
	if _, err := line(100 * time.Millisecond); err == nil {
		t.Fatal("a stalled proxy delivered")
	}
	p.Set(Pass)
	if s, err := line(5 * time.Second); s != "two\n" || err != nil {
		t.Fatalf("after the stall: %q %v, want the held bytes", s, err)
	}
	p.Set(BlackHole)
	c.Write([]byte("three\n"))
	if _, err := line(100 * time.Millisecond); err == nil {
		t.Fatal("a black hole answered")
	}
	p.Set(Pass)
	c.Write([]byte("four\n"))
	if s, err := line(5 * time.Second); s != "four\n" || err != nil {
		t.Fatalf("after the black hole: %q %v, want only what came after", s, err)
	}
}
