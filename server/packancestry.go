package server

import (
	"bytes"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"

	"github.com/git-relay/git-relay/internal/gitx"
	"github.com/git-relay/git-relay/internal/wire"
)

// maxPackCommit bounds the size of a commit packAncestry reads; a larger
// one is left to git.
const maxPackCommit = 1 << 20

// packAncestry settles, from the commits a small pack carries, the branch
// moves of ups that are fast-forwards: those whose old id is reached from
// the new one through parents that the pack carries. It returns the moves
// it could not settle, for git to check once the pack is indexed. It
// spares a small push (one commit, most often) an index of its pack and a
// merge-base while upstream waits for the pack's end.
//
// Only what the pack itself proves counts: an id is the hash of the
// commit's bytes as the pack holds them, and those bytes are what
// upstream gets. Anything it cannot read (a deltified commit, another
// hash function, a damaged pack) is left to git.
func packAncestry(pack []byte, ups []wire.Update) []wire.Update {
	parents := packCommits(pack)
	var left []wire.Update
	for _, u := range ups {
		if !reaches(parents, u.New, u.Old) {
			left = append(left, u)
		}
	}
	return left
}

// reaches says whether to is from, or an ancestor of from through the
// commits parents knows.
func reaches(parents map[string][]string, from, to string) bool {
	seen := map[string]bool{from: true}
	next := []string{from}
	for len(next) > 0 {
		id := next[len(next)-1]
		next = next[:len(next)-1]
		if id == to {
			return true
		}
		for _, p := range parents[id] {
			if !seen[p] {
				seen[p] = true
				next = append(next, p)
			}
		}
	}
	return false
}

// packCommits maps the ids of the whole (not deltified) commits in a
// SHA-1 pack to their parents; it returns what it read before anything
// it could not.
func packCommits(pack []byte) map[string][]string {
	commits := map[string][]string{}
	sc := packfile.NewScanner(bytes.NewReader(pack))
	_, n, err := sc.Header()
	if err != nil {
		return commits
	}
	var body bytes.Buffer
	for range n {
		h, err := sc.NextObjectHeader()
		if err != nil {
			return commits
		}
		if h.Type != plumbing.CommitObject || h.Length > maxPackCommit {
			continue
		}
		body.Reset()
		if _, _, err := sc.NextObject(&body); err != nil || int64(body.Len()) != h.Length {
			return commits
		}
		id := plumbing.ComputeHash(plumbing.CommitObject, body.Bytes())
		if ps, ok := commitParents(body.Bytes()); ok {
			commits[id.String()] = ps
		}
	}
	return commits
}

// commitParents reads a commit's parents as git does: the "parent"
// lines right after its "tree" line, and none elsewhere. ok is false for a
// header git would not read so.
func commitParents(b []byte) (ps []string, ok bool) {
	line, b, _ := bytes.Cut(b, []byte("\n"))
	if id, found := bytes.CutPrefix(line, []byte("tree ")); !found || !gitx.ValidOID(string(id)) {
		return nil, false
	}
	for {
		line, rest, _ := bytes.Cut(b, []byte("\n"))
		id, found := bytes.CutPrefix(line, []byte("parent "))
		if !found {
			return ps, true
		}
		if !gitx.ValidOID(string(id)) {
			return nil, false
		}
		ps = append(ps, string(id))
		b = rest
	}
}
