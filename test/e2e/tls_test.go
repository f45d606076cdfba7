package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tokenwarden/tokenwarden/test/internal/procs"
)

// testCA is a throwaway certificate authority.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a leaf for 127.0.0.1 (server) or a SPIFFE URI (client).
func (ca *testCA) issue(t *testing.T, serial int64, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	// Write then rename, as a Secret volume or cert-manager does: a reader
	// never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startServeArgs runs the tokenwarden binary with args and waits for its
// "serving" line.
func startServeArgs(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(procs.Binary(t), append([]string{"serve"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "tokenwarden serve: grpc") {
				ready <- true
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("serve exited: %s", stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("serve did not start: %s", stderr.String())
	}
}

// passThroughCall opens a stream with creds and sends request headers for
// a path tokenwarden does not govern; it returns the error, if any.
func passThroughCall(addr string, creds credentials.TransportCredentials) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: ":method", RawValue: []byte("GET")}, {Key: ":path", RawValue: []byte("/v1/models")},
		}}, EndOfStream: true,
	}}}); err != nil {
		return err
	}
	resp, err := st.Recv()
	if err != nil {
		return err
	}
	if resp.GetRequestHeaders() == nil || resp.GetModeOverride() == nil {
		return os.ErrInvalid
	}
	return st.CloseSend()
}

// With --client-ca the ext_proc port speaks mutual TLS: a caller without a
// certificate, with one another CA signed, or in plaintext is refused in
// the handshake; Envoy's certificate is accepted; and a rotated server
// certificate is served without a restart.
func TestProcessorPortRequiresMutualTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	ca, rogue := newCA(t, "mesh"), newCA(t, "rogue")
	srvCert, srvKey := ca.issue(t, 10, true)
	cliCert, cliKey := ca.issue(t, 20, false)
	rogueCert, rogueKey := rogue.issue(t, 30, false)
	for name, b := range map[string][]byte{"ca.pem": ca.pem, "tls.crt": srvCert, "tls.key": srvKey} {
		writeFile(t, filepath.Join(dir, name), b)
	}
	addr := procs.FreeAddr(t)
	startServeArgs(t, "--grpc-addr", addr, "--admin-addr", procs.FreeAddr(t),
		"--tls-cert", filepath.Join(dir, "tls.crt"), "--tls-key", filepath.Join(dir, "tls.key"), "--client-ca", filepath.Join(dir, "ca.pem"))

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.pem)
	pair := func(c, k []byte) []tls.Certificate {
		p, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{p}
	}
	var seenSerial *big.Int
	verify := func(cs tls.ConnectionState) error {
		seenSerial = cs.PeerCertificates[0].SerialNumber
		return nil
	}
	clientTLS := func(certs []tls.Certificate) credentials.TransportCredentials {
		return credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: certs, VerifyConnection: verify})
	}

	if err := passThroughCall(addr, insecure.NewCredentials()); err == nil {
		t.Error("a plaintext caller was served")
	}
	if err := passThroughCall(addr, clientTLS(nil)); err == nil {
		t.Error("a caller without a client certificate was served")
	}
	if err := passThroughCall(addr, clientTLS(pair(rogueCert, rogueKey))); err == nil {
		t.Error("a caller whose certificate another CA signed was served")
	}
	if err := passThroughCall(addr, clientTLS(pair(cliCert, cliKey))); err != nil {
		t.Fatalf("the mesh's client certificate was refused: %v", err)
	}
	if seenSerial.Int64() != 10 {
		t.Fatalf("server certificate serial %v, want 10", seenSerial)
	}

	// Rotate the server certificate; new handshakes see it within a few seconds.
	srvCert2, srvKey2 := ca.issue(t, 11, true)
	writeFile(t, filepath.Join(dir, "tls.key"), srvKey2)
	writeFile(t, filepath.Join(dir, "tls.crt"), srvCert2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := passThroughCall(addr, clientTLS(pair(cliCert, cliKey))); err == nil && seenSerial.Int64() == 11 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rotated certificate was not served; last serial %v", seenSerial)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Without certificates, serve refuses to listen in plaintext beyond
// loopback unless the operator says a proxy authenticates callers.
func TestPlaintextOnlyOnLoopback(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	cmd := exec.Command(procs.Binary(t), "serve", "--grpc-addr", "0.0.0.0:0", "--admin-addr", procs.FreeAddr(t))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not a loopback address") {
		t.Fatalf("serve on 0.0.0.0 without TLS: err %v, output %s", err, out)
	}
}
