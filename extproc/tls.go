package extproc

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// TLSFiles name the processor's certificate, key and the CA that signs the
// clients (Envoy) it accepts. With ClientCA set the port requires mutual
// TLS: a client without a certificate the CA signed is refused in the
// handshake, before any ext_proc message.
type TLSFiles struct {
	Cert, Key, ClientCA string
}

// certCheckInterval is how often the files are looked at again; rotated
// certificates take effect on the next handshake after it.
const certCheckInterval = time.Second

// certReloader serves the current certificate and client CA, read again
// when the files change, so a rotation (cert-manager, a re-mounted Secret)
// needs no restart. A rotation that does not load (a half-written file)
// keeps the last good pair and reports the error.
type certReloader struct {
	files TLSFiles
	now   func() time.Time
	log   *slog.Logger

	mu        sync.Mutex
	checked   time.Time
	raw       [3][]byte // cert, key, CA contents last loaded
	cfg       *tls.Config
	lastError error
}

// NewTLSConfig returns a server TLS configuration over f that reloads the
// files when they change; a change that does not load is logged once and
// the last good files stay in use. It fails when the files do not load now.
func NewTLSConfig(f TLSFiles, log *slog.Logger) (*tls.Config, error) {
	if f.Cert == "" || f.Key == "" {
		return nil, errors.New("extproc: TLS needs a certificate and a key")
	}
	if log == nil {
		log = slog.Default()
	}
	r := &certReloader{files: f, now: time.Now, log: log}
	if _, err := r.load(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return r.current() },
	}, nil
}

// current returns the configuration for one handshake.
func (r *certReloader) current() (*tls.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.now().Sub(r.checked) >= certCheckInterval {
		r.checked = r.now()
		cfg, err := r.loadLocked()
		switch {
		case err == nil:
			if r.lastError != nil {
				r.log.Info("TLS files load again", "cert", r.files.Cert)
			}
			r.cfg, r.lastError = cfg, nil
		case r.lastError == nil || r.lastError.Error() != err.Error():
			r.log.Error("TLS files changed but do not load; keeping the last good ones", "err", err)
			r.lastError = err
		}
	}
	return r.cfg, nil
}

func (r *certReloader) load() (*tls.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cfg, err := r.loadLocked()
	if err != nil {
		return nil, err
	}
	r.cfg, r.checked = cfg, r.now()
	return cfg, nil
}

// loadLocked reads the files and builds a configuration; unchanged files
// keep the configuration already built.
func (r *certReloader) loadLocked() (*tls.Config, error) {
	var raw [3][]byte
	for i, p := range []string{r.files.Cert, r.files.Key, r.files.ClientCA} {
		if p == "" {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("extproc: TLS: %w", err)
		}
		raw[i] = b
	}
	if r.cfg != nil && bytes.Equal(raw[0], r.raw[0]) && bytes.Equal(raw[1], r.raw[1]) && bytes.Equal(raw[2], r.raw[2]) {
		return r.cfg, nil
	}
	pair, err := tls.X509KeyPair(raw[0], raw[1])
	if err != nil {
		return nil, fmt.Errorf("extproc: TLS certificate %s and key %s: %w", r.files.Cert, r.files.Key, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{pair},
		NextProtos:   []string{"h2"},
	}
	if r.files.ClientCA != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(raw[2]) {
			return nil, fmt.Errorf("extproc: TLS client CA %s holds no PEM certificate", r.files.ClientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	r.raw = raw
	return cfg, nil
}
