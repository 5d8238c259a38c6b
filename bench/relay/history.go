package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"

	"github.com/git-relay/git-relay/internal/gitx"
)

// The shape of the generated history: what a mid-sized product repository
// looks like, scaled so that its pack is about 25 MiB.
const (
	numCommits   = 300
	numText      = 1850 // source files
	numBinary    = 150  // images, fonts, fixtures
	textEdits    = 6    // source files touched by each commit
	binaryEvery  = 4    // every this many commits, a binary is added or replaced
	meanTextSize = 7 << 10
	meanBinSize  = 72 << 10
	epoch        = 1700000000 // the first commit's date
)

// generateHistory writes the history into repo with git fast-import and
// packs it the way a developer's repository is packed after gc. The
// content is deterministic: the same seed gives the same commit ids.
func generateHistory(ctx context.Context, repo gitx.Repo, seed uint64) error {
	pr, pw := io.Pipe()
	go func() {
		bw := bufio.NewWriterSize(pw, 1<<20)
		err := writeFastImport(bw, seed)
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
	}()
	cmd := repo.Command(ctx, "fast-import", "--quiet", "--done")
	cmd.Stdin = pr
	if err := cmd.Run(); err != nil {
		pr.CloseWithError(err)
		return fmt.Errorf("import the generated history: %w", err)
	}
	// fast-import's pack deltifies poorly; repack as gc would.
	if _, err := repo.Run(ctx, "repack", "-a", "-d", "-f", "-q"); err != nil {
		return fmt.Errorf("repack the generated history: %w", err)
	}
	if _, err := repo.Run(ctx, "reset", "-q", "--hard", "master"); err != nil {
		return fmt.Errorf("check out the generated history: %w", err)
	}
	return nil
}

// gen makes code-like text: lines of identifiers, keywords, literals and
// indentation drawn from a vocabulary, which compresses about as well as
// real source code does (around 3:1), and random binaries, which do not
// compress at all.
type gen struct {
	rng   *rand.Rand
	vocab []string
}

var keywords = []string{"func", "return", "if", "else", "for", "range", "var", "const", "type", "struct", "interface", "nil", "err", "ctx", "defer", "go", "switch", "case", "break", "import"}

func newGen(seed uint64) *gen {
	g := &gen{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	for range 6000 {
		n := 3 + g.rng.IntN(10)
		b := make([]byte, n)
		for i := range b {
			b[i] = letters[g.rng.IntN(len(letters))]
		}
		g.vocab = append(g.vocab, string(b))
	}
	return g
}

func (g *gen) word() string {
	if g.rng.IntN(4) == 0 {
		return keywords[g.rng.IntN(len(keywords))]
	}
	// A skewed pick, so that some identifiers are common, as in real code.
	i := int(float64(len(g.vocab)) * g.rng.Float64() * g.rng.Float64())
	return g.vocab[i]
}

func (g *gen) line() string {
	var b strings.Builder
	b.WriteString(strings.Repeat("\t", g.rng.IntN(4)))
	n := 2 + g.rng.IntN(9)
	for i := range n {
		if i > 0 {
			b.WriteString([]string{" ", " ", ".", "(", ", ", " := ", " = "}[g.rng.IntN(7)])
		}
		switch g.rng.IntN(10) {
		case 0:
			fmt.Fprintf(&b, "0x%x", g.rng.Uint32())
		case 1:
			fmt.Fprintf(&b, "%q", g.word()+" "+g.word())
		default:
			b.WriteString(g.word())
		}
	}
	b.WriteByte('\n')
	return b.String()
}

// size draws a file size averaging mean, from a quarter of it to 1.75×.
func (g *gen) size(mean int) int {
	return mean/4 + g.rng.IntN(mean*3/2)
}

func (g *gen) text(size int) []string {
	var lines []string
	for n := 0; n < size; {
		l := g.line()
		lines = append(lines, l)
		n += len(l)
	}
	return lines
}

func (g *gen) binary(size int) []byte {
	b := make([]byte, size)
	for i := 0; i+8 <= len(b); i += 8 {
		v := g.rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// edit changes a source file the way a commit does: a few lines replaced,
// a few inserted, sometimes a few removed.
func (g *gen) edit(lines []string) []string {
	for range 1 + g.rng.IntN(4) {
		switch i := g.rng.IntN(len(lines)); g.rng.IntN(3) {
		case 0:
			lines[i] = g.line()
		case 1:
			lines = append(lines[:i], append([]string{g.line(), g.line()}, lines[i:]...)...)
		default:
			if len(lines) > 10 {
				lines = append(lines[:i], lines[i+1:]...)
			}
		}
	}
	return lines
}

func writeFastImport(w io.Writer, seed uint64) error {
	g := newGen(seed)
	textPath := func(i int) string { return fmt.Sprintf("src/pkg%02d/file%04d.go", i%40, i) }
	binPath := func(i int) string { return fmt.Sprintf("assets/blob%03d.bin", i) }
	texts := make([][]string, numText)

	blob := func(path string, data []byte) {
		fmt.Fprintf(w, "M 100644 inline %s\ndata %d\n", path, len(data))
		w.Write(data)
		io.WriteString(w, "\n")
	}
	header := func(n int, msg string) {
		fmt.Fprintf(w, "commit refs/heads/master\nmark :%d\n", n+1)
		when := epoch + n*3600
		fmt.Fprintf(w, "author A U Thor <author@example.com> %d +0000\n", when)
		fmt.Fprintf(w, "committer C O Mitter <committer@example.com> %d +0000\n", when)
		fmt.Fprintf(w, "data %d\n%s\n", len(msg), msg)
		if n > 0 {
			fmt.Fprintf(w, "from :%d\n", n)
		}
	}

	header(0, "Initial import")
	for i := range numText {
		texts[i] = g.text(g.size(meanTextSize))
		blob(textPath(i), []byte(strings.Join(texts[i], "")))
	}
	for i := range numBinary {
		blob(binPath(i), g.binary(g.size(meanBinSize)))
	}
	io.WriteString(w, "\n")

	for n := 1; n < numCommits; n++ {
		header(n, fmt.Sprintf("Change %d: %s %s", n, g.word(), g.word()))
		for range textEdits {
			i := g.rng.IntN(numText)
			texts[i] = g.edit(texts[i])
			blob(textPath(i), []byte(strings.Join(texts[i], "")))
		}
		if n%binaryEvery == 0 {
			blob(binPath(g.rng.IntN(numBinary+numCommits/binaryEvery)), g.binary(g.size(meanBinSize)))
		}
		io.WriteString(w, "\n")
	}
	_, err := io.WriteString(w, "done\n")
	return err
}
