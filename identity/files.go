package identity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// filesInterval is how often a files source looks at its files. A hash
// of their contents, not their mtimes, decides: a rewrite within the same
// second, or a copy that kept the old mtime, is still seen.
const filesInterval = time.Second

// NewFiles returns a Source that reads the identity from PEM files: the
// leaf and its chain (certFile), its private key (keyFile) and the trusted
// CA certificates (caFile). It loads them once and returns an error if
// they are unreadable or invalid (no single SPIFFE ID, a leaf that does
// not chain to the CAs, a key that does not match). Run then re-reads them
// when their contents change; a bad rewrite (half written, key and cert
// from different generations) keeps the last good Material and shows in
// Status until the files are whole again. The trust domain is the leaf's.
// The Source adds component=identity, kind and cert_file to log.
func NewFiles(certFile, keyFile, caFile string, log *slog.Logger) (*Source, error) {
	s := newSource(KindFiles, "", log)
	f := &fileLoop{src: s, certFile: certFile, keyFile: keyFile, caFile: caFile}
	s.log = s.log.With("cert_file", certFile)
	s.files = f
	sum, m, err := f.load()
	if err != nil {
		return nil, err
	}
	f.sum = sum
	s.install(m)
	return s, nil
}

// fileLoop re-reads the files. Its fields other than src are owned by
// run's goroutine (and by NewFiles before run starts).
type fileLoop struct {
	src                       *Source
	certFile, keyFile, caFile string
	sum                       [sha256.Size]byte // contents last looked at
}

func (f *fileLoop) run(ctx context.Context) error {
	t := time.NewTicker(filesInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		f.check()
	}
}

// check reloads the files if their contents changed since the last look.
// A failure is logged once per distinct content: the next change retries.
func (f *fileLoop) check() {
	sum, m, err := f.load()
	if sum == f.sum {
		return
	}
	f.sum = sum
	if err != nil {
		f.src.fail(err)
		f.src.log.Warn("identity files not usable; keeping the last good identity", "error", err)
		return
	}
	f.src.install(m)
}

// load reads the three files and builds a Material. It returns the hash
// of what it read even when building fails, so that check tells a new
// bad rewrite from the same one.
func (f *fileLoop) load() ([sha256.Size]byte, *Material, error) {
	h := sha256.New()
	var contents [3][]byte
	var readErr error
	for i, name := range []string{f.certFile, f.keyFile, f.caFile} {
		b, err := os.ReadFile(name)
		if err != nil && readErr == nil {
			readErr = fmt.Errorf("identity: %w", err)
		}
		contents[i] = b
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	if readErr != nil {
		return sum, nil, readErr
	}
	roots, err := fileRoots(contents[2])
	if err != nil {
		return sum, nil, fmt.Errorf("identity: %s: %w", f.caFile, err)
	}
	m, err := newMaterial(contents[0], contents[1], roots, "")
	if err != nil {
		return sum, nil, fmt.Errorf("%w (files %s, %s)", err, f.certFile, f.keyFile)
	}
	return sum, m, nil
}

// fileRoots parses every CERTIFICATE block of a CA file. Anything else in
// the file, or no certificate at all, is an error: a truncated bundle must
// not silently drop a root.
func fileRoots(b []byte) ([]root, error) {
	var roots []root
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA certificate %d: %w", len(roots)+1, err)
		}
		sum := sha256.Sum256(c.Raw)
		roots = append(roots, root{id: hex.EncodeToString(sum[:]), name: c.Subject.String(), active: true, cert: c})
	}
	if len(bytes.TrimSpace(b)) > 0 {
		return nil, fmt.Errorf("trailing data after %d certificates", len(roots))
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("no CA certificate")
	}
	return roots, nil
}
