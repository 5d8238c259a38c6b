package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/sideband"

	"github.com/git-relay/git-relay/internal/bundle"
	"github.com/git-relay/git-relay/internal/gitx"
)

// ZeroID is the object id that stands for "no ref" in an update: Old for a
// create, New for a delete.
const ZeroID = "0000000000000000000000000000000000000000"

// Refs is what upstream advertises to a fetch.
type Refs struct {
	// Head is the branch HEAD points at (refs/heads/...), "" when upstream
	// does not say (an empty repository, a detached HEAD).
	Head string
	// Refs maps every refs/heads/* and refs/tags/* to its object id.
	Refs map[string]string
	// Peeled maps an annotated tag (refs/tags/*) to the object it points at.
	Peeled map[string]string
}

// Update is one ref update: a create (Old is ZeroID), a delete (New is
// ZeroID) or a move. Old is always checked: receive-pack refuses the
// update if the ref is not at Old any more, which makes every push a
// compare-and-swap.
type Update struct {
	Ref, Old, New string
}

// PushRequest is one push.
type PushRequest struct {
	Updates []Update
	// Pack is the pack to send (it may be thin: deltas against objects
	// upstream already has). It is read to EOF and not closed. It must be
	// nil when every update is a delete; when it is nil otherwise an empty
	// pack is sent, for updates to objects upstream already has.
	Pack io.Reader
	// Atomic makes upstream apply all updates or none; it is an error if
	// upstream does not offer it.
	Atomic bool
	// Options are push options (git push -o), passed to upstream's hooks;
	// it is an error if upstream does not accept them.
	Options []string
	// Progress receives upstream's progress and hook messages; nil asks
	// upstream to be quiet.
	Progress io.Writer
}

// PushResult is what upstream did.
type PushResult struct {
	// Refs maps each updated ref to "" on success or upstream's reason for
	// refusing it ("failed to update ref", "non-fast-forward", "atomic
	// transaction failed", "pre-receive hook declined", ...).
	Refs map[string]string
	// UnpackError is upstream's complaint about the pack, "" if it was
	// accepted.
	UnpackError string
	// Messages holds the last lines upstream's hooks printed ("remote: ..."
	// in git push), which explain a refusal by a hook. Redacted.
	Messages string
}

// OK tells whether the pack was accepted and every ref updated.
func (p *PushResult) OK() bool {
	if p.UnpackError != "" {
		return false
	}
	for _, reason := range p.Refs {
		if reason != "" {
			return false
		}
	}
	return true
}

// List returns upstream's branches, tags and HEAD, as a fetch sees them.
func (r *Remote) List(ctx context.Context) (*Refs, error) {
	var adv *packp.AdvRefs
	var err error
	if r.base == nil {
		adv, err = r.fileAdvertise(ctx)
	} else {
		adv, _, err = r.httpAdvertise(ctx, "git-upload-pack")
	}
	if err != nil {
		return nil, err
	}
	refs, err := refsOf(adv)
	if err != nil {
		return nil, fmt.Errorf("list refs of %s: %w", r, err)
	}
	return refs, nil
}

// refsOf picks the branches, tags and HEAD out of an advertisement. A
// name that git-check-ref-format refuses is left out, as git's own client
// leaves it out: the relay lists refs to its clients one per line, and a
// name with a newline in it would break the list.
func refsOf(adv *packp.AdvRefs) (*Refs, error) {
	if err := checkObjectFormat(adv.Capabilities); err != nil {
		return nil, err
	}
	refs := &Refs{Refs: map[string]string{}, Peeled: map[string]string{}}
	for name, h := range adv.References {
		if listed(name) && gitx.ValidRefName(name) {
			refs.Refs[name] = h.String()
		}
	}
	for name, h := range adv.Peeled {
		if listed(name) && gitx.ValidRefName(name) {
			refs.Peeled[name] = h.String()
		}
	}
	for _, v := range adv.Capabilities.Get(capability.SymRef) {
		if target, ok := strings.CutPrefix(v, "HEAD:"); ok {
			refs.Head = target
		}
	}
	return refs, nil
}

// Tips returns the ids upstream's branches and tags point at.
func (r *Refs) Tips() map[string]bool {
	tips := make(map[string]bool, len(r.Refs))
	for _, id := range r.Refs {
		tips[id] = true
	}
	return tips
}

func listed(name string) bool {
	return strings.HasPrefix(name, "refs/heads/") || strings.HasPrefix(name, "refs/tags/")
}

// Push sends req to upstream and reports what upstream did with each ref.
// An error means the push could not be carried out (upstream unreachable,
// missing, refusing the token or the request); refused refs and a refused
// pack are reported in the result instead.
func (r *Remote) Push(ctx context.Context, req PushRequest) (*PushResult, error) {
	return r.Prepare(ctx).Push(ctx, req)
}

func (req *PushRequest) deletesOnly() bool {
	for _, u := range req.Updates {
		if u.New != ZeroID {
			return false
		}
	}
	return true
}

func (req *PushRequest) validate() error {
	if len(req.Updates) == 0 {
		return errors.New("no ref updates")
	}
	seen := map[string]bool{}
	for _, u := range req.Updates {
		// git's own rules, as the server checks them: go-git's are
		// stricter ("refs/heads/-x", "refs/heads/@"), and a push of a
		// name that git accepts must not fail here after its upload.
		if !strings.HasPrefix(u.Ref, "refs/") || !gitx.ValidRefName(u.Ref) {
			return fmt.Errorf("invalid ref name %q", u.Ref)
		}
		if seen[u.Ref] {
			return fmt.Errorf("ref %q updated twice", u.Ref)
		}
		seen[u.Ref] = true
		if !validOID(u.Old) || !validOID(u.New) {
			return fmt.Errorf("update of %q: object ids must be 40 lowercase hex digits", u.Ref)
		}
		if u.Old == ZeroID && u.New == ZeroID {
			return fmt.Errorf("update of %q: old and new ids are both zero", u.Ref)
		}
	}
	if req.Pack != nil && req.deletesOnly() {
		return errors.New("a pack was given for a push that only deletes refs")
	}
	for _, o := range req.Options {
		if strings.ContainsAny(o, "\x00\n") {
			return fmt.Errorf("push option %q contains a NUL or newline", o)
		}
	}
	return nil
}

func validOID(s string) bool { return gitx.ValidOID(s) }

// decodeAdvertisement reads a ref advertisement (v0). An HTTP
// advertisement's "# service=" line is accepted and checked when service
// is not "".
func decodeAdvertisement(rd io.Reader, service string) (*packp.AdvRefs, error) {
	adv := packp.NewAdvRefs()
	err := adv.Decode(rd)
	if errors.Is(err, packp.ErrEmptyAdvRefs) {
		// upload-pack of an empty repository sends a bare flush.
		err = nil
	}
	var errLine *pktline.ErrorLine
	if errors.As(err, &errLine) {
		return nil, fmt.Errorf("upstream says: %s", errLine.Text)
	}
	if err != nil {
		return nil, fmt.Errorf("decode ref advertisement: %w", err)
	}
	if service != "" {
		want := "# service=" + service
		if len(adv.Prefix) == 0 || strings.TrimSuffix(string(adv.Prefix[0]), "\n") != want {
			return nil, fmt.Errorf("the ref advertisement does not start with %q", want)
		}
	}
	return adv, nil
}

func checkObjectFormat(caps *capability.List) error {
	if f := caps.Get(capability.ObjectFormat); len(f) > 0 && f[0] != "sha1" {
		return fmt.Errorf("upstream uses object format %q; only sha1 is supported", f[0])
	}
	return nil
}

// negotiate picks the capabilities of our request from those upstream
// advertised, and says whether replies come multiplexed in side bands.
func negotiate(adv *packp.AdvRefs, req PushRequest) (*capability.List, bool, error) {
	caps := adv.Capabilities
	if err := checkObjectFormat(caps); err != nil {
		return nil, false, err
	}
	if !caps.Supports(capability.ReportStatus) {
		// Without a report we could not tell the user which refs landed.
		return nil, false, errors.New("upstream does not offer report-status")
	}
	out := capability.NewList()
	_ = out.Set(capability.ReportStatus)
	sb := false
	if caps.Supports(capability.Sideband64k) {
		_ = out.Set(capability.Sideband64k)
		sb = true
	}
	if req.Progress == nil && caps.Supports(capability.Quiet) {
		_ = out.Set(capability.Quiet)
	}
	if req.Atomic {
		if !caps.Supports(capability.Atomic) {
			return nil, false, errors.New("upstream does not support atomic pushes")
		}
		_ = out.Set(capability.Atomic)
	}
	if len(req.Options) > 0 {
		if !caps.Supports(capability.PushOptions) {
			return nil, false, errors.New("upstream does not accept push options")
		}
		_ = out.Set(capability.PushOptions)
	}
	for _, u := range req.Updates {
		if u.New == ZeroID && !caps.Supports(capability.DeleteRefs) {
			return nil, false, fmt.Errorf("upstream does not allow deleting refs (%s)", u.Ref)
		}
	}
	// Packs from git bundle use offset deltas; receive-pack has accepted
	// them since 2006, but a server that does not say so may not.
	if !req.deletesOnly() && req.Pack != nil && !caps.Supports(capability.OFSDelta) {
		return nil, false, errors.New("upstream does not accept packs with offset deltas (ofs-delta)")
	}
	if caps.Supports(capability.Agent) {
		_ = out.Set(capability.Agent, "git-relay")
	}
	return out, sb, nil
}

// writeRequest writes the update commands, the push options and the pack.
// The request is encoded here rather than by packp's
// ReferenceUpdateRequest.Encode, which can only write push options of the
// form key=value, while git passes any string through.
func writeRequest(w io.Writer, caps *capability.List, req PushRequest) error {
	e := pktline.NewEncoder(w)
	for i, u := range req.Updates {
		cmd := packp.Command{Name: plumbing.ReferenceName(u.Ref), Old: plumbing.NewHash(u.Old), New: plumbing.NewHash(u.New)}
		line := fmt.Sprintf("%s %s %s", cmd.Old, cmd.New, cmd.Name)
		if i == 0 {
			line += "\x00" + caps.String()
		}
		if err := e.EncodeString(line); err != nil {
			return fmt.Errorf("send commands: %w", err)
		}
	}
	if err := e.Flush(); err != nil {
		return fmt.Errorf("send commands: %w", err)
	}
	if caps.Supports(capability.PushOptions) {
		for _, o := range req.Options {
			if err := e.EncodeString(o); err != nil {
				return fmt.Errorf("send push options: %w", err)
			}
		}
		if err := e.Flush(); err != nil {
			return fmt.Errorf("send push options: %w", err)
		}
	}
	if req.deletesOnly() {
		// receive-pack reads no pack after delete-only commands.
		return nil
	}
	pack := req.Pack
	if pack == nil {
		pack = bytes.NewReader(bundle.EmptyPack())
	}
	// In pieces of packWrite: a pack is megabytes.
	if _, err := gitx.CopyInPieces(w, pack, packWrite); err != nil {
		return fmt.Errorf("send pack: %w", err)
	}
	return nil
}

// packWrite is how much of a pack goes to upstream in one write.
const packWrite = 256 << 10

// readResult reads receive-pack's report, demultiplexing side bands when
// they were negotiated, and keeps reading to the end so that messages
// printed after the report (post-receive hooks) reach req.Progress.
func (r *Remote) readResult(rd io.Reader, sb bool, req PushRequest) (*PushResult, error) {
	msgs := &tailLines{max: 8 << 10}
	var progress io.Writer = msgs
	if req.Progress != nil {
		progress = io.MultiWriter(msgs, req.Progress)
	}
	body := rd
	var demux *sideband.Demuxer
	if sb {
		demux = sideband.NewDemuxer(sideband.Sideband64k, rd)
		demux.Progress = progress
		body = demux
	}
	st := packp.NewReportStatus()
	if err := st.Decode(body); err != nil {
		if msg := msgs.String(); msg != "" {
			err = fmt.Errorf("%w (upstream said: %s)", err, r.Redact(msg))
		}
		return nil, fmt.Errorf("read upstream's report: %w", err)
	}
	if demux != nil {
		// Errors after a complete report change nothing about it.
		_, _ = io.Copy(io.Discard, demux)
	}
	res := &PushResult{Refs: map[string]string{}, Messages: r.Redact(msgs.String())}
	if st.UnpackStatus != "ok" {
		res.UnpackError = r.Redact(st.UnpackStatus)
	}
	want := map[string]bool{}
	for _, u := range req.Updates {
		want[u.Ref] = true
	}
	for _, cs := range st.CommandStatuses {
		name := cs.ReferenceName.String()
		if !want[name] {
			continue
		}
		if cs.Status == "ok" {
			res.Refs[name] = ""
		} else {
			res.Refs[name] = r.Redact(cs.Status)
		}
	}
	for _, u := range req.Updates {
		if _, ok := res.Refs[u.Ref]; !ok {
			res.Refs[u.Ref] = "no status reported by upstream"
		}
	}
	return res, nil
}

// tailLines keeps the last max bytes of complete lines written to it. A
// carriage return discards the line so far, so progress meters, which
// redraw one line, leave nothing behind.
type tailLines struct {
	max  int
	done []byte
	cur  []byte
}

func (t *tailLines) Write(p []byte) (int, error) {
	for _, c := range p {
		switch c {
		case '\r':
			t.cur = t.cur[:0]
		case '\n':
			t.done = append(append(t.done, t.cur...), '\n')
			t.cur = t.cur[:0]
			if len(t.done) > t.max {
				t.done = t.done[len(t.done)-t.max:]
			}
		default:
			if len(t.cur) < t.max {
				t.cur = append(t.cur, c)
			}
		}
	}
	return len(p), nil
}

func (t *tailLines) String() string { return strings.TrimSpace(string(t.done)) }
