// A Go service that admits only agents with an allowed SPIFFE ID (mTLS, CRL-checked).
//
// Run:
//
//	cyphrs trust-bundle --out ca.pem     # the root(s): the only trust anchor
//	cyphrs crl --all --out crls.pem      # every CA's CRL (root included)
//	go run main.go server-fullchain.pem server-key.pem ca.pem crls.pem 8443 \
//	    spiffe://acme.internal/agent/billing [more allowed IDs ...]
//
// Each accepted connection gets one line "ok <spiffe-id>"; every refusal is logged on
// stderr as "refused: <reason>". Standard library only (Go >= 1.19).
//
// crypto/tls checks no CRLs: VerifyPeerCertificate below checks every certificate of the
// verified chain against its issuer's CRL (signature, nextUpdate, serial).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"time"
)

func loadCRLs(path string) ([]*x509.RevocationList, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var crls []*x509.RevocationList
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "X509 CRL" {
			continue
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			return nil, err
		}
		crls = append(crls, crl)
	}
	if len(crls) == 0 {
		return nil, fmt.Errorf("no CRL in %s", path)
	}
	return crls, nil
}

// checkRevocation refuses a chain unless every non-root certificate's issuer has a
// current, correctly signed CRL that does not list it (like OpenSSL's CRL_CHECK_ALL).
func checkRevocation(chain []*x509.Certificate, crls []*x509.RevocationList, now time.Time) error {
	for i := 0; i+1 < len(chain); i++ {
		cert, issuer := chain[i], chain[i+1]
		var found *x509.RevocationList
		for _, crl := range crls {
			if crl.CheckSignatureFrom(issuer) == nil {
				found = crl
				break
			}
		}
		if found == nil {
			return fmt.Errorf("no CRL of %s", issuer.Subject)
		}
		if now.After(found.NextUpdate) {
			return fmt.Errorf("CRL of %s is past nextUpdate %s", issuer.Subject, found.NextUpdate)
		}
		for _, revoked := range found.RevokedCertificates {
			if revoked.SerialNumber.Cmp(cert.SerialNumber) == 0 {
				return fmt.Errorf("certificate revoked: serial %x", cert.SerialNumber)
			}
		}
	}
	return nil
}

// spiffeID is the X.509-SVID's SPIFFE ID: exactly one URI SAN, with the spiffe scheme.
func spiffeID(leaf *x509.Certificate) (string, error) {
	if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" {
		return "", errors.New("not an X.509-SVID (needs exactly one spiffe:// URI SAN)")
	}
	return leaf.URIs[0].String(), nil
}

func main() {
	if len(os.Args) < 7 {
		log.Fatal("usage: main CERT KEY CA CRLS PORT SPIFFE_ID...")
	}
	cert, key, trust, crlPath, port, allowed := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6:]
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	pemRoots, err := os.ReadFile(trust)
	if err != nil || !roots.AppendCertsFromPEM(pemRoots) {
		log.Fatalf("no root certificate in %s", trust)
	}
	crls, err := loadCRLs(crlPath)
	if err != nil {
		log.Fatal(err)
	}
	config := &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
		MinVersion:   tls.VersionTLS12,
		VerifyPeerCertificate: func(_ [][]byte, chains [][]*x509.Certificate) error {
			for _, chain := range chains {
				if err := checkRevocation(chain, crls, time.Now()); err != nil {
					return err
				}
				id, err := spiffeID(chain[0])
				if err != nil {
					return err
				}
				for _, ok := range allowed {
					if id == ok {
						return nil
					}
				}
				return fmt.Errorf("SPIFFE ID %s not allowed", id)
			}
			return errors.New("no verified chain")
		},
	}
	listener, err := tls.Listen("tcp", "127.0.0.1:"+port, config)
	if err != nil {
		log.Fatal(err)
	}
	for {
		conn, err := listener.Accept()
		if err != nil {
			continue
		}
		go func(conn net.Conn) {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			tlsConn := conn.(*tls.Conn)
			if err := tlsConn.Handshake(); err != nil {
				fmt.Fprintf(os.Stderr, "refused: %s\n", strings.TrimSpace(err.Error()))
				return
			}
			id, _ := spiffeID(tlsConn.ConnectionState().PeerCertificates[0])
			fmt.Fprintf(conn, "ok %s\n", id)
		}(conn)
	}
}
