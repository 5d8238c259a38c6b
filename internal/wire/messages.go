package wire

import (
	"crypto/sha256"
	"fmt"
	"regexp"
	"time"
)

// Version is the protocol version; both sides must speak the same one.
const Version = 3

// Routes, relative to the API base (/api/gr on the server; whatever the
// proxy exposes on the client).
//
// Everything the relay does is an exchange: the client opens it under an
// id of its choosing (so that opening again after a lost answer is the
// same exchange, never a second one), may upload a payload in sealed
// chunks, and gets an answer that may carry a downloaded payload, inline
// when it is small or in sealed chunks when it is not. A push uploads a
// bundle; a fetch uploads a git protocol v2 request and downloads
// upload-pack's response; a ref listing downloads the list.
const (
	PathOpen       = "x"           // POST, sealed Open (+ an inline upload, or an upload's first chunk: Open.First): Status
	PathUp         = "x/up"        // PUT ?id=&i=[&final=1], a sealed upload chunk: Status
	PathDown       = "x/down"      // GET ?id=&i=: a flag byte and a sealed download chunk (chunk 0 may come with the Status, see Status.First)
	PathStatus     = "x/status"    // GET ?id=[&wait=1]: Status
	PathCancel     = "x/cancel"    // POST ?id=: Status
	PathRemoteInfo = "remote-info" // GET ?repo=&branch=: RemoteInfo (the seed's call)
)

// DefaultMaxBody is the proxy's cap on every request and response body.
const DefaultMaxBody = 4_500_000

// MinMaxBody is the smallest body cap either side accepts.
const MinMaxBody = 64 << 10

// Exchange kinds.
const (
	KindPush  = "push"  // upload: PushManifest and a bundle; answer: ref results
	KindRefs  = "refs"  // answer: upstream's refs (RefsHeader and lines), for a push
	KindCaps  = "caps"  // answer: git upload-pack's protocol v2 capabilities
	KindFetch = "fetch" // upload: one protocol v2 request; answer: upload-pack's response
)

// Open opens an exchange. Its exact bytes are signed with the request and
// their SHA-256 is bound into both payload keys and into every chunk.
type Open struct {
	V    int    `json:"v"`
	ID   string `json:"id"` // 32 hex digits, chosen by the client
	Kind string `json:"kind"`
	Repo string `json:"repo"`
	// Salt (32 random bytes in hex) goes into the upload payload's key.
	Salt string `json:"salt"`
	// ChunkSize is the upload's payload bytes per chunk; 0 when there is
	// no upload or it is inline.
	ChunkSize int `json:"chunkSize,omitempty"`
	// MaxBody is the client's cap on bodies; download chunks fit it.
	MaxBody int64 `json:"maxBody"`
	// Inline says that the whole upload payload follows the message, as
	// one final chunk.
	Inline bool `json:"inline,omitempty"`
	// Follows is the id of the exchange that began the same git command
	// (its capabilities), for a fetch exchange: upstream as of a refresh
	// begun since that exchange came is as fresh as the command needs.
	Follows string `json:"follows,omitempty"`
	// Push says, for a ref listing (KindRefs), that a push follows it:
	// the relay may begin the conversation with upstream's receive-pack.
	Push bool `json:"push,omitempty"`
	// First says, for a chunked upload, that its first chunk may follow
	// the message, sealed as x/up takes it: a new push's upload begins a
	// round trip sooner. Only to a relay that said it takes one
	// (Status.UpFirst); the message says so even when the chunk does not
	// follow, as when an interrupted push opens its exchange again.
	First bool `json:"first,omitempty"`
}

var idRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// ValidID says whether id is an exchange id.
func ValidID(id string) bool { return idRE.MatchString(id) }

// Hash is the hash that binds an exchange's payloads to its Open bytes.
func Hash(openBytes []byte) [32]byte { return sha256.Sum256(openBytes) }

// Phases of an exchange, in order.
const (
	PhaseReceiving  = "receiving"         // upload chunks are coming
	PhaseProcessing = "processing bundle" // checking what came
	PhasePushing    = "pushing"           // upstream's receive-pack has the pack
	PhaseSending    = "sending"           // the answer's payload is being written
	PhaseDone       = "done"
	PhaseFailed     = "failed"
	PhaseCancelled  = "cancelled"
)

// Ended says whether a phase is final.
func Ended(phase string) bool {
	return phase == PhaseDone || phase == PhaseFailed || phase == PhaseCancelled
}

// Status is where an exchange stands.
type Status struct {
	ID      string `json:"id"`
	Phase   string `json:"phase"`
	Message string `json:"message,omitempty"` // why it failed
	Code    string `json:"code,omitempty"`    // the failure's kind
	// Held lists the upload chunks the server holds, for a resumed upload.
	Held []uint32 `json:"held,omitempty"`
	// Results says what became of each ref of a push.
	Results  []RefResult `json:"results,omitempty"`
	Timeline []PhaseTime `json:"timeline,omitempty"`
	// Down describes the answer's payload, once it is being written.
	Down *Down `json:"down,omitempty"`
	// First says that the answer's first chunk follows the message, as
	// x/down serves it, in a reply to a request that waited for the
	// answer: a round trip fewer before the client has something to hand
	// git. A client that takes no notice asks for the chunk as before.
	First bool `json:"first,omitempty"`
	// UpFirst says, in the answer of a ref listing for a push, that this
	// relay takes an upload's first chunk with the Open (Open.First).
	UpFirst bool `json:"upFirst,omitempty"`
}

// Down is an answer's payload.
type Down struct {
	// Inline says the whole payload follows the status message.
	Inline bool `json:"inline,omitempty"`
	// Salt (hex) goes into the download payload's key.
	Salt      string `json:"salt,omitempty"`
	ChunkSize int    `json:"chunkSize,omitempty"`
	// Chunks is how many chunks are written; with Final, all of them.
	Chunks uint32 `json:"chunks"`
	Final  bool   `json:"final,omitempty"`
}

// PhaseTime is when an exchange entered a phase.
type PhaseTime struct {
	Phase string    `json:"phase"`
	At    time.Time `json:"at"`
}

// A download chunk answer is a flag byte, DownFinal on the payload's last
// chunk and 0 on the others, followed by the sealed chunk. The flag is
// covered by the chunk's own authentication (its nonce and associated
// data say whether it is final).
const DownFinal = 1

// Update is one ref change in a push.
type Update struct {
	Ref   string `json:"ref"`
	Old   string `json:"old"` // zero id: create
	New   string `json:"new"` // zero id: delete
	Force bool   `json:"force,omitempty"`
}

// ZeroID stands for "no object": Old of a create, New of a delete.
const ZeroID = "0000000000000000000000000000000000000000"

// PushManifest is what a push does. It opens the push's upload payload,
// framed as a u32 big-endian length and the JSON, and the bundle follows
// it (nothing, for a push that only moves refs to objects upstream has).
// It travels in the payload, not in the Open message, so that a push of
// any number of refs fits.
type PushManifest struct {
	Updates []Update `json:"updates"`
	Atomic  bool     `json:"atomic,omitempty"`
	Options []string `json:"options,omitempty"`
}

// Reason is why a ref was refused: git's own words where git has some.
type Reason string

// Reasons.
const (
	ReasonFetchFirst     Reason = "fetch first"
	ReasonNonFastForward Reason = "non-fast forward"
	ReasonAlreadyExists  Reason = "already exists"
	ReasonStaleInfo      Reason = "stale info"
	ReasonAtomic         Reason = "atomic push failed"
	ReasonDefaultBranch  Reason = "refusing to delete the default branch"
	ReasonForbidden      Reason = "forbidden" // a server policy; Detail says which
	ReasonUpstream       Reason = "upstream"  // upstream refused; Detail has its words
	ReasonNoStatus       Reason = "no status" // upstream said nothing of the ref
	ReasonUnpack         Reason = "unpack"    // upstream could not unpack the pack
	ReasonMissing        Reason = "missing"   // the push lacks objects upstream lacks too
	ReasonNotExist       Reason = "not exist" // a delete of a ref upstream does not have
	ReasonRefused        Reason = "refused"   // the whole push was refused; Detail says why
)

// RefResult is what became of one ref.
type RefResult struct {
	Ref    string `json:"ref"`
	OK     bool   `json:"ok"`
	Reason Reason `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// String is the reason as git shows it next to the ref.
func (r RefResult) String() string {
	if r.Detail == "" {
		return string(r.Reason)
	}
	switch r.Reason {
	case ReasonForbidden, ReasonUpstream, ReasonRefused:
		return r.Detail
	}
	return fmt.Sprintf("%s (%s)", r.Reason, r.Detail)
}

// RefsHeader opens a ref listing (KindRefs): its JSON on the first line,
// then one "<id> <name>" line per ref.
type RefsHeader struct {
	Head       string `json:"head,omitempty"` // the branch HEAD points at
	AllowForce bool   `json:"allowForce,omitempty"`
	MaxRefs    int    `json:"maxRefs,omitempty"` // most updates one push may carry
}

// RemoteInfo is the seed's `remote-info` answer for one branch.
type RemoteInfo struct {
	Repo   string `json:"repo"`
	Branch string `json:"branch"`
	SHA    string `json:"sha"` // "" when the branch does not exist
}

// Error is the body of every non-2xx answer.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"error"`
}

// Error codes.
const (
	CodeBadRequest   = "bad_request"
	CodeNotFound     = "not_found"
	CodeConflict     = "conflict"
	CodeTooLarge     = "too_large"
	CodeUpstream     = "upstream"
	CodeForbidden    = "forbidden"
	CodeLimit        = "limit"
	CodeInternal     = "internal"
	CodeUnauthorized = "unauthorized"
	CodeStale        = "stale"
	// CodeNotReady: a download chunk not written yet; ask again.
	CodeNotReady = "not_ready"
	// CodeRange: a download chunk past the final one.
	CodeRange = "out_of_range"
	// CodeGone: the exchange ended (cancelled, failed or expired).
	CodeGone = "gone"
)
