package main

// --web.config.file end to end: basic auth with a bcrypt password, TLS
// with a certificate the test makes.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/internal/testkit/nettest"
	"golang.org/x/crypto/bcrypt"
)

// ---- web configuration ----

// selfSigned writes a certificate and key for 127.0.0.1 and returns a
// client that trusts it.
func selfSigned(t testing.TB, dir string) (certFile, keyFile string, client *http.Client) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tcpfsm test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// --web.config.file: a bcrypt basic-auth user guards every path; with TLS
// too, plain HTTP gets nowhere.
func TestAgentWebConfig(t *testing.T) {
	nettest.RequireBPF(t)
	notInKernelVM(t)
	bin := buildBinary(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret pass"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	for _, withTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "basic auth", true: "TLS and basic auth"}[withTLS], func(t *testing.T) {
			dir := t.TempDir()
			cfg := fmt.Sprintf("basic_auth_users:\n  prometheus: %s\n", hash)
			o := agentOptions{}
			if withTLS {
				cert, key, client := selfSigned(t, dir)
				cfg += fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\n", cert, key)
				o.client, o.scheme = client, "https"
			}
			webCfg := filepath.Join(dir, "web.yml")
			if err := os.WriteFile(webCfg, []byte(cfg), 0o600); err != nil {
				t.Fatal(err)
			}
			ns := nettest.NewNS(t)
			o.args = []string{"--web.config.file", webCfg, "--netns", ns.Path(), "--log.file", filepath.Join(dir, "log")}
			a := startAgent(t, bin, o)
			for _, c := range []struct {
				path, user, pass string
				want             int
			}{
				{"/metrics", "", "", http.StatusUnauthorized},
				{"/metrics", "prometheus", "wrong", http.StatusUnauthorized},
				{"/metrics", "someone", "s3cret pass", http.StatusUnauthorized},
				{"/metrics", "prometheus", "s3cret pass", http.StatusOK},
				{"/healthz", "", "", http.StatusUnauthorized},
				{"/readyz", "prometheus", "s3cret pass", http.StatusOK},
			} {
				code, body := a.get(t, c.path, c.user, c.pass)
				if code != c.want {
					t.Errorf("GET %s as %q/%q: %d, want %d", c.path, c.user, c.pass, code, c.want)
				}
				if code == http.StatusOK && c.path == "/metrics" && !bytes.Contains(body, []byte("tcpfsm_build_info")) {
					t.Errorf("GET /metrics: no tcpfsm_build_info")
				}
			}
			if withTLS {
				plain := &agentRun{addr: a.addr, scheme: "http", client: &http.Client{Timeout: 5 * time.Second}}
				if code, _ := plain.get(t, "/metrics", "prometheus", "s3cret pass"); code == http.StatusOK {
					t.Error("plain HTTP served /metrics with TLS configured")
				}
			}
			if code := a.stop(t); code != 0 {
				t.Errorf("exit %d", code)
			}
		})
	}
}
