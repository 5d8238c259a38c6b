package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

// S3Config says where an S3 store lives and how to reach it.
type S3Config struct {
	Bucket string
	// Prefix is put before every key: "" or a path ending in "/".
	Prefix string
	// Endpoint is the server's URL for S3-compatible storage (versitygw,
	// MinIO, Ceph…), addressed path-style; empty for AWS itself.
	Endpoint        string
	Region          string
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	// HTTPClient is optional; the SDK's default client otherwise.
	HTTPClient *http.Client
}

// S3 keeps objects in an S3 bucket, under a prefix. Conditional writes
// are the server's own (PutObject with If-None-Match: * or If-Match), so
// any number of relay instances can share one bucket without a lock of
// their own. Every object starts with the store's header (header.go), so
// that its S3 ETag changes on every write.
//
// The object "push/1f2e/state" is the S3 object "PREFIX/push/1f2e/state!".
// Servers that keep objects as files (versitygw's posix backend, MinIO)
// refuse "a/b/c" once "a/b" is an object, since "a/b" would have to be
// both a file and a folder; with the mark, "a/b!" and "a/b/c!" never
// clash. The mark sorts below every key byte and "/", so S3's listing
// order stays the Store's key order ("a/b" < "a/b-x" < "a/b/c").
//
// The ETag that Get returns comes from the server. While a Put replaces
// the object, a server may pair the new bytes with the ETag of the version
// they replaced (versitygw's posix backend does: it reads the ETag before
// it opens the file). A compare-and-swap with such an ETag fails, since
// that version is gone and ETags never repeat, so a read-modify-write
// loop only reads again.
type S3 struct {
	client *s3.Client
	bucket string
	prefix string
	where  string // s3://bucket/prefix, for messages
}

var _ Store = (*S3)(nil)

// s3LeafMark ends every object's S3 key.
const s3LeafMark = "!"

func (s *S3) objectKey(key string) *string {
	return aws.String(s.prefix + key + s3LeafMark)
}

// conflictRetries bounds the retries of a write answered with a 409 that
// means "try again" (see retryConflict).
const conflictRetries = 4

// retryConflict reports whether a 409 answer to PutObject asks for the
// same request again. Neither wrote anything, so a retry is safe for a
// conditional write too.
//   - ConditionalRequestConflict: AWS had another conditional write of the
//     key in flight and says to retry, which then succeeds or gets 412.
//   - ExistingObjectIsDirectory: versitygw's posix backend answers this
//     when a concurrent DeleteObject removed the empty parent folder it
//     had just created (removeParents between its mkdirAll and link).
//     None of our keys can be a folder (they end in s3LeafMark), so the
//     answer can only mean that race.
func retryConflict(status int, code string) bool {
	return status == http.StatusConflict && (code == "ConditionalRequestConflict" || code == "ExistingObjectIsDirectory")
}

// NewS3 opens the store and checks that its bucket is reachable, so that
// a wrong endpoint, bucket or key shows at start-up rather than at the
// first push.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	where := "s3://" + cfg.Bucket + "/" + cfg.Prefix
	opts := s3.Options{
		Region: cfg.Region,
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{
				AccessKeyID:     cfg.AccessKeyID,
				SecretAccessKey: cfg.SecretAccessKey,
				SessionToken:    cfg.SessionToken,
				Source:          "git-relay store",
			}, nil
		}),
		// CRC checksums on every request and response are the SDK's new
		// default, which several S3-compatible servers refuse; SigV4
		// already signs the payload's SHA-256 over plain HTTP, and chunks
		// carry their own AEAD tag.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	}
	if cfg.Endpoint != "" {
		opts.BaseEndpoint = aws.String(cfg.Endpoint)
		opts.UsePathStyle = true
	}
	if cfg.HTTPClient != nil {
		opts.HTTPClient = cfg.HTTPClient
	}
	s := &S3{client: s3.New(opts), bucket: cfg.Bucket, prefix: cfg.Prefix, where: where}
	if _, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket}); err != nil {
		switch status, _ := classify(err); status {
		case http.StatusNotFound:
			return nil, fmt.Errorf("s3 store %s: bucket %q does not exist: create it first", where, cfg.Bucket)
		case http.StatusForbidden:
			return nil, fmt.Errorf("s3 store %s: access denied (HTTP 403): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and the bucket's policy", where)
		}
		return nil, fmt.Errorf("s3 store %s: %w", where, err)
	}
	return s, nil
}

func (s *S3) String() string { return s.where }

// Put implements Store.
func (s *S3) Put(ctx context.Context, key string, data []byte, opt PutOptions) (ETag, error) {
	if err := checkPut(key, opt); err != nil {
		return "", err
	}
	hdr, nonce := newHeader()
	in := &s3.PutObjectInput{
		Bucket:        &s.bucket,
		Key:           s.objectKey(key),
		ContentLength: aws.Int64(int64(headerLen + len(data))),
	}
	if opt.IfNoneMatch {
		in.IfNoneMatch = aws.String("*")
	}
	if opt.IfMatch != "" {
		in.IfMatch = aws.String(`"` + string(opt.IfMatch) + `"`)
	}
	for attempt := 0; ; attempt++ {
		in.Body = &twoSlices{a: hdr[:], b: data}
		out, err := s.client.PutObject(ctx, in)
		if err == nil {
			return unquote(aws.ToString(out.ETag)), nil
		}
		status, code := classify(err)
		if retryConflict(status, code) && attempt < conflictRetries {
			if err := sleep(ctx, time.Duration(attempt+1)*50*time.Millisecond); err != nil {
				return "", err
			}
			continue
		}
		conditional := opt.IfNoneMatch || opt.IfMatch != ""
		lost := status == http.StatusPreconditionFailed ||
			status == http.StatusConflict && code == "ConditionalRequestConflict" ||
			// AWS answers If-Match on a missing key with 404.
			status == http.StatusNotFound && opt.IfMatch != ""
		if conditional && lost {
			// The SDK retries a request whose answer it did not get; if
			// our first try went through, the retry finds our own
			// object and fails its condition. The nonce tells.
			if etag, ok := s.ours(ctx, key, nonce); ok {
				return etag, nil
			}
			return "", fmt.Errorf("%w: put %q: %w", ErrPrecondition, key, err)
		}
		return "", s.mapErr("put", key, err)
	}
}

// ours reports whether the object under key is the one we wrote with
// nonce, and its ETag.
func (s *S3) ours(ctx context.Context, key, nonce string) (ETag, bool) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: &s.bucket,
		Key:    s.objectKey(key),
		Range:  aws.String(fmt.Sprintf("bytes=0-%d", headerLen-1)),
	})
	if err != nil {
		return "", false
	}
	defer out.Body.Close()
	var hdr [headerLen]byte
	if _, err := io.ReadFull(out.Body, hdr[:]); err != nil {
		return "", false
	}
	got, err := parseHeader(hdr[:])
	return unquote(aws.ToString(out.ETag)), err == nil && got == nonce
}

// Get implements Store.
func (s *S3) Get(ctx context.Context, key string, dst []byte) ([]byte, ETag, error) {
	if err := ValidKey(key); err != nil {
		return dst[:0], "", err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: s.objectKey(key)})
	if err != nil {
		return dst[:0], "", s.mapErr("get", key, err)
	}
	defer out.Body.Close()
	var hdr [headerLen]byte
	if _, err := io.ReadFull(out.Body, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = errNoHeader
		}
		return dst[:0], "", fmt.Errorf("get %q: %w", key, err)
	}
	if _, err := parseHeader(hdr[:]); err != nil {
		return dst[:0], "", fmt.Errorf("get %q: %w", key, err)
	}
	if dst, err = readBody(out.Body, aws.ToInt64(out.ContentLength)-headerLen, dst[:0]); err != nil {
		return dst[:0], "", fmt.Errorf("get %q: %w", key, err)
	}
	return dst, unquote(aws.ToString(out.ETag)), nil
}

// readBody appends the rest of body, n bytes if n >= 0, to dst. With a
// known length it reads exactly that, so that a buffer reused for an
// object of the same size is not reallocated.
func readBody(body io.Reader, n int64, dst []byte) ([]byte, error) {
	if n >= 0 {
		dst = slices.Grow(dst, int(n))[:n]
		if _, err := io.ReadFull(body, dst); err != nil {
			return dst, err
		}
		var extra [1]byte
		if m, _ := body.Read(extra[:]); m > 0 {
			return dst, errors.New("object longer than its Content-Length")
		}
		return dst, nil
	}
	for {
		if len(dst) == cap(dst) {
			dst = slices.Grow(dst, 64<<10)
		}
		m, err := body.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+m]
		if errors.Is(err, io.EOF) {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
	}
}

// Stat implements Store.
func (s *S3) Stat(ctx context.Context, key string) (Info, error) {
	if err := ValidKey(key); err != nil {
		return Info{}, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: s.objectKey(key)})
	if err != nil {
		return Info{}, s.mapErr("stat", key, err)
	}
	size := aws.ToInt64(out.ContentLength) - headerLen
	if size < 0 {
		return Info{}, fmt.Errorf("stat %q: %w", key, errNoHeader)
	}
	return Info{Key: key, Size: size, ETag: unquote(aws.ToString(out.ETag)), Modified: aws.ToTime(out.LastModified)}, nil
}

// Delete implements Store.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: s.objectKey(key)})
	if err != nil {
		if err := s.mapErr("delete", key, err); !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return nil
}

// List implements Store. S3 lists keys in the order of their UTF-8
// bytes, which for the key alphabet is the Store's key order.
func (s *S3) List(ctx context.Context, prefix string, fn func(Info) error) error {
	if err := ValidPrefix(prefix); err != nil {
		return err
	}
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: &s.bucket,
		Prefix: aws.String(s.prefix + prefix),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return s.mapErr("list", prefix, err)
		}
		for _, o := range page.Contents {
			key, ours := strings.CutSuffix(strings.TrimPrefix(aws.ToString(o.Key), s.prefix), s3LeafMark)
			size := aws.ToInt64(o.Size) - headerLen
			if !ours || ValidKey(key) != nil || size < 0 {
				continue // not ours: a folder marker or a file someone left
			}
			if err := fn(Info{Key: key, Size: size, ETag: unquote(aws.ToString(o.ETag)), Modified: aws.ToTime(o.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// mapErr turns S3's "no such key" into ErrNotFound and names the
// operation.
func (s *S3) mapErr(op, key string, err error) error {
	switch status, code := classify(err); {
	case code == "NoSuchBucket":
		return fmt.Errorf("%s %q: bucket %q does not exist: create it, or fix the store's s3:// URL: %w", op, key, s.bucket, err)
	case status == http.StatusNotFound || code == "NoSuchKey" || code == "NotFound":
		return fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	return fmt.Errorf("%s %q in %s: %w", op, key, s.where, err)
}

// classify returns the HTTP status and S3 error code of an SDK error.
func classify(err error) (status int, code string) {
	var withStatus interface{ HTTPStatusCode() int }
	if errors.As(err, &withStatus) {
		status = withStatus.HTTPStatusCode()
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		code = api.ErrorCode()
	}
	return status, code
}

// unquote strips the quotes S3 puts around an ETag; Put adds them back
// for If-Match.
func unquote(etag string) ETag {
	return ETag(strings.TrimSuffix(strings.TrimPrefix(etag, `"`), `"`))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// twoSlices reads a then b, and seeks, which the SDK needs to sign the
// payload and to retry, without copying a megabyte chunk behind its
// header.
type twoSlices struct {
	a, b []byte
	off  int64
}

func (r *twoSlices) Read(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		var src []byte
		switch la := int64(len(r.a)); {
		case r.off < la:
			src = r.a[r.off:]
		case r.off < la+int64(len(r.b)):
			src = r.b[r.off-la:]
		default:
			if n == 0 {
				return 0, io.EOF
			}
			return n, nil
		}
		c := copy(p, src)
		p = p[c:]
		n += c
		r.off += int64(c)
	}
	return n, nil
}

func (r *twoSlices) Seek(offset int64, whence int) (int64, error) {
	size := int64(len(r.a) + len(r.b))
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += size
	default:
		return 0, errors.New("seek: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("seek: negative position")
	}
	r.off = offset
	return offset, nil
}
