package sshx

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// keys are what we log in with, and what we know about the keys we could
// not use, for the message when the server accepts none.
type keys struct {
	signers []ssh.Signer
	// from names each signer's origin ("~/.ssh/id_ed25519", "ssh-agent").
	from []string
	// locked are key files protected by a passphrase whose key the agent
	// does not hold.
	locked   []string
	home     string
	agentOK  bool
	closeFns []func()
}

func (k *keys) close() {
	for _, f := range k.closeFns {
		f()
	}
}

// tilde shows p with the home folder as ~, the way users write it.
func (k *keys) tilde(p string) string {
	if rest, ok := strings.CutPrefix(p, k.home+string(filepath.Separator)); ok && k.home != "" && k.home != "/" {
		return "~/" + rest
	}
	return p
}

// collectSigners gathers keys in the order OpenSSH tries them: the
// IdentityFile entries (with their certificates), the agent's keys (only
// those of the IdentityFile entries under IdentitiesOnly), then the
// default files.
func collectSigners(r resolved, home string, logf func(string, ...any)) *keys {
	k := &keys{home: home}
	seen := map[string]bool{}
	add := func(s ssh.Signer, from string) {
		id := string(s.PublicKey().Marshal())
		if !seen[id] {
			seen[id] = true
			k.signers = append(k.signers, s)
			k.from = append(k.from, from)
		}
	}
	certs := loadCertificates(r, logf)
	type lockedFile struct {
		path string
		pub  ssh.PublicKey
	}
	var fileSigners []ssh.Signer
	var fileFrom []string
	var locked []lockedFile
	wanted := map[string]bool{} // public keys of the IdentityFile entries
	for _, path := range r.identityFiles {
		b, err := os.ReadFile(path)
		if err != nil {
			if !r.defaultIdentities || !errors.Is(err, os.ErrNotExist) {
				logf("skipping key %s: %v", path, err)
			}
			continue
		}
		s, err := ssh.ParsePrivateKey(b)
		var pp *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &pp):
			pub := pp.PublicKey
			if pub == nil {
				pub = readPublicKey(path + ".pub")
			}
			if pub != nil {
				wanted[string(pub.Marshal())] = true
			}
			locked = append(locked, lockedFile{path, pub})
			continue
		case err != nil:
			logf("skipping key %s: %v", path, err)
			continue
		}
		wanted[string(s.PublicKey().Marshal())] = true
		for _, cs := range certs[string(s.PublicKey().Marshal())] {
			if c, err := ssh.NewCertSigner(cs.cert, s); err == nil {
				logf("using certificate %s", cs.path)
				fileSigners = append(fileSigners, c)
				fileFrom = append(fileFrom, k.tilde(cs.path))
			}
		}
		logf("using key %s (%s)", path, ssh.FingerprintSHA256(s.PublicKey()))
		fileSigners = append(fileSigners, s)
		fileFrom = append(fileFrom, k.tilde(path))
	}
	if !r.defaultIdentities {
		for i, s := range fileSigners {
			add(s, fileFrom[i])
		}
	}
	inAgent := map[string]bool{}
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if c, err := net.Dial("unix", sock); err == nil {
			k.agentOK = true
			ag := agent.NewClient(c)
			ss, err := ag.Signers()
			if err != nil {
				logf("ssh-agent: %v", err)
			}
			logf("ssh-agent offers %d key(s)", len(ss))
			for _, s := range ss {
				id := string(s.PublicKey().Marshal())
				inAgent[id] = true
				if r.identitiesOnly && !wanted[id] {
					continue
				}
				for _, cs := range certs[id] {
					if c, err := ssh.NewCertSigner(cs.cert, s); err == nil {
						add(c, k.tilde(cs.path))
					}
				}
				add(s, "ssh-agent")
			}
			// The agent connection must outlive the handshake: its
			// signers call back into it.
			k.closeFns = append(k.closeFns, func() { c.Close() })
		} else {
			logf("ssh-agent at SSH_AUTH_SOCK is not reachable: %v", err)
		}
	}
	if r.defaultIdentities {
		for i, s := range fileSigners {
			add(s, fileFrom[i])
		}
	}
	for _, l := range locked {
		if l.pub != nil && inAgent[string(l.pub.Marshal())] {
			continue
		}
		logf("skipping key %s: it is protected by a passphrase and ssh-agent does not hold it", l.path)
		k.locked = append(k.locked, l.path)
	}
	return k
}

type certFile struct {
	path string
	cert *ssh.Certificate
}

// loadCertificates reads the CertificateFile entries and the "-cert.pub"
// files beside the identity files, by the public key they certify.
func loadCertificates(r resolved, logf func(string, ...any)) map[string][]certFile {
	out := map[string][]certFile{}
	paths := slices.Clone(r.certificateFiles)
	for _, f := range r.identityFiles {
		paths = append(paths, f+"-cert.pub")
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) || slices.Contains(r.certificateFiles, p) {
				logf("skipping certificate %s: %v", p, err)
			}
			continue
		}
		pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
		if err != nil {
			logf("skipping certificate %s: %v", p, err)
			continue
		}
		cert, ok := pub.(*ssh.Certificate)
		if !ok {
			logf("skipping certificate %s: it holds a plain public key", p)
			continue
		}
		id := string(cert.Key.Marshal())
		out[id] = append(out[id], certFile{p, cert})
	}
	return out
}

func readPublicKey(path string) ssh.PublicKey {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil
	}
	return pub
}

// lockedAdvice says what to do about the passphrase-protected keys.
func (k *keys) lockedAdvice() string {
	p := k.tilde(k.locked[0])
	agentNote := ""
	if !k.agentOK {
		agentNote = " (no ssh-agent is running: start one with `eval \"$(ssh-agent)\"` first)"
	}
	more := ""
	if len(k.locked) > 1 {
		more = fmt.Sprintf(" (and %d more protected key(s))", len(k.locked)-1)
	}
	return fmt.Sprintf("%s is protected by a passphrase and not in ssh-agent%s: run ssh-add %s%s", p, more, p, agentNote)
}

// authError is the one line that says why no key of ours worked.
func (k *keys) authError(addr, user string, offered []string) error {
	prefix := fmt.Sprintf("log in to %s as %q: ", addr, user)
	if len(offered) > 0 && !slices.Contains(offered, "publickey") {
		return fmt.Errorf("%sthe server accepts only %s, and git-sidecar logs in with keys only; add your public key to ~/.ssh/authorized_keys there (ssh-copy-id)",
			prefix, strings.Join(offered, ", "))
	}
	if len(k.locked) > 0 {
		return errors.New(prefix + "the server accepted none of the keys offered; " + k.lockedAdvice())
	}
	var others []string
	for _, m := range offered {
		if m != "publickey" {
			others = append(others, m)
		}
	}
	also := ""
	if len(others) > 0 {
		also = "; it would also take " + strings.Join(others, ", ") + ", which git-sidecar does not use"
	}
	return fmt.Errorf("%sthe server accepted none of our keys (%d tried: %s); add one to its ~/.ssh/authorized_keys%s",
		prefix, len(k.signers), strings.Join(compact(k.from), ", "), also)
}

// compact folds repeated names ("ssh-agent", "ssh-agent") into one with a
// count.
func compact(names []string) []string {
	var out []string
	counts := map[string]int{}
	for _, n := range names {
		if counts[n] == 0 {
			out = append(out, n)
		}
		counts[n]++
	}
	for i, n := range out {
		if c := counts[n]; c > 1 {
			out[i] = fmt.Sprintf("%s (%d keys)", n, c)
		}
	}
	return out
}
