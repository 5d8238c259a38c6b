package wire

import (
	"crypto/sha256"
	"encoding/json"
	"time"
)

// API paths, relative to the API base (/api/gr on the server; whatever the
// proxy exposes on the client).
const (
	PathRefs        = "refs"
	PathRemoteInfo  = "remote-info"
	PathPush        = "push"
	PathPushChunk   = "push/chunk"
	PathPushStatus  = "push/status"
	PathPushFinish  = "push/complete"
	PathFetch       = "fetch"
	PathFetchChunk  = "fetch/chunk"
	PathFetchStatus = "fetch/status"
)

// DefaultMaxBody is the proxy's cap on every request and response body.
const DefaultMaxBody = 4_500_000

// Refs is what upstream holds, as `git ls-remote` there sees it.
type Refs struct {
	Repo       string            `json:"repo"`
	Head       string            `json:"head,omitempty"` // symref target of HEAD
	Refs       map[string]string `json:"refs"`           // refs/heads/*, refs/tags/* -> id
	Peeled     map[string]string `json:"peeled,omitempty"`
	AllowForce bool              `json:"allowForce"`
	MaxBody    int64             `json:"maxBody"`
}

// RemoteInfo is the seed's `remote-info` answer for one branch.
type RemoteInfo struct {
	Repo   string `json:"repo"`
	Branch string `json:"branch"`
	SHA    string `json:"sha"` // "" when the branch does not exist
}

// Update is one ref change in a push.
type Update struct {
	Ref   string `json:"ref"`
	Old   string `json:"old"` // zero id: create
	New   string `json:"new"` // zero id: delete
	Force bool   `json:"force,omitempty"`
}

// Compression names.
const (
	CompressNone = "none"
	CompressZstd = "zstd"
)

// PushManifest opens one push. Its exact bytes are signed with the request
// that creates the session, and their SHA-256 is bound into the payload
// key and into every chunk. It says what the push does, not how large it
// is: the helper uploads the bundle while git writes it, so the sizes, the
// chunk count and the bundle's hash come at the end, in Totals.
type PushManifest struct {
	Version   int      `json:"v"`
	Repo      string   `json:"repo"`
	Updates   []Update `json:"updates"`
	Atomic    bool     `json:"atomic,omitempty"`
	Options   []string `json:"options,omitempty"`
	Salt      string   `json:"salt"`      // hex, 32 random bytes
	ChunkSize int      `json:"chunkSize"` // payload bytes per chunk; 0 for a ref-only update
	Nonce     string   `json:"nonce"`     // random, so that no two manifests are equal
}

// PushManifestVersion is the version of PushManifest and of the chunk
// format that goes with it.
const PushManifestVersion = 2

// Totals closes a push's upload: it is the signed body of the request
// that completes the session. The server checks the chunks it holds
// against it (the last one must have been sealed as final) and the
// assembled bundle against its size and hash.
type Totals struct {
	Compression string `json:"compression"` // none | zstd
	BundleSize  int64  `json:"bundleSize"`  // plaintext bundle bytes (0: ref-only update)
	BundleHash  string `json:"bundleHash"`  // hex SHA-256 of the bundle
	PayloadSize int64  `json:"payloadSize"` // bytes sealed (after compression)
	Chunks      uint32 `json:"chunks"`      // 0 for a ref-only update
}

// ManifestHash is the hash bound into keys and chunks.
func ManifestHash(raw []byte) [32]byte { return sha256.Sum256(raw) }

// Session names a server-side session.
type Session struct {
	Session string `json:"session"`
}

// Push phases, in order.
const (
	PhaseReceiving  = "receiving"
	PhaseProcessing = "processing bundle"
	PhasePushing    = "pushing"
	PhaseDone       = "done"
	PhaseFailed     = "failed"
)

// RefResult is what upstream did with one ref.
type RefResult struct {
	Ref    string `json:"ref"`
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"` // git's words where they apply: "fetch first", "non-fast forward", "stale info"
}

// PushStatus is a push session's state.
type PushStatus struct {
	Session  string      `json:"session"`
	Phase    string      `json:"phase"`
	Held     []uint32    `json:"held"` // chunk indexes the server holds
	Chunks   uint32      `json:"chunks"`
	Message  string      `json:"message,omitempty"`
	Results  []RefResult `json:"results,omitempty"`
	Timeline []PhaseTime `json:"timeline,omitempty"`
}

// PhaseTime is when a push entered a phase.
type PhaseTime struct {
	Phase string    `json:"phase"`
	At    time.Time `json:"at"`
}

// FetchRequest asks for a bundle of Wants, excluding what the client has.
type FetchRequest struct {
	Repo    string   `json:"repo"`
	Wants   []string `json:"wants"`
	Haves   []string `json:"haves"`
	MaxBody int64    `json:"maxBody"`
}

// FetchManifest opens a fetch payload prepared by the server. As with a
// push, the server sends the bundle while git writes it, so the sizes and
// the hash come at the end, in FetchStatus.Totals.
type FetchManifest struct {
	Version   int    `json:"v"`
	Session   string `json:"session"`
	Repo      string `json:"repo"`
	Salt      string `json:"salt"`
	ChunkSize int    `json:"chunkSize"` // 0: the client already has everything
	// Compression is decided on the bundle's first bytes, before the
	// first chunk, so that the client can unpack while it downloads.
	Compression string `json:"compression,omitempty"`
}

// FetchManifestVersion is the version of FetchManifest and of the chunk
// answers that go with it.
const FetchManifestVersion = 2

// Fetch phases, in order.
const (
	FetchPreparing = "preparing" // checking the request, refreshing the mirror
	FetchSending   = "sending"   // chunks can be asked for while git writes the rest
	FetchReady     = "ready"     // every chunk is written; Totals is set
	FetchFailed    = "failed"
)

// FetchStatus wraps the manifest with its exact bytes, which the payload
// key and chunks are bound to.
type FetchStatus struct {
	Phase    string          `json:"phase"`
	Message  string          `json:"message,omitempty"`
	Manifest json.RawMessage `json:"manifest,omitempty"`
	Totals   *Totals         `json:"totals,omitempty"`
}

// A fetch chunk answer is a flag byte, FetchChunkFinal on the payload's
// last chunk and 0 on the others, followed by the sealed chunk. The flag
// is covered by the response's signature and, through the nonce and the
// associated data, by the chunk's own authentication.
const FetchChunkFinal = 1

// Error is the body of every non-2xx answer.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"error"`
}

// Error codes.
const (
	CodeBadRequest = "bad_request"
	CodeNotFound   = "not_found"
	CodeConflict   = "conflict"
	CodeTooLarge   = "too_large"
	CodeUpstream   = "upstream"
	CodeForbidden  = "forbidden"
	CodeInternal   = "internal"
	// CodeNotReady: a fetch chunk that git has not written yet; ask again.
	CodeNotReady = "not_ready"
	// CodeRange: a fetch chunk past the payload's final chunk.
	CodeRange = "out_of_range"
)
