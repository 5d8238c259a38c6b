package store

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
)

// schemeRE matches a URL scheme, to tell "s3://…" and mistakes such as
// "gs://…" from a folder path.
var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://`)

// bucketRE is S3's rule for bucket names.
var bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// Open opens the store at location: a folder path (created if missing) or
// s3://BUCKET/PREFIX, configured by the standard AWS variables:
// AWS_REGION (or AWS_DEFAULT_REGION), AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, optionally AWS_SESSION_TOKEN, and
// AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for S3-compatible servers
// (addressed path-style).
func Open(ctx context.Context, location string) (Store, error) {
	if location == "" {
		return nil, fmt.Errorf("store location is empty: pass a folder path or s3://BUCKET/PREFIX")
	}
	if !schemeRE.MatchString(location) {
		return NewLocal(location)
	}
	if !strings.HasPrefix(location, "s3://") {
		return nil, fmt.Errorf("store %q: unsupported scheme: use a folder path or s3://BUCKET/PREFIX", location)
	}
	cfg, err := S3ConfigFromEnv(location, os.Getenv)
	if err != nil {
		return nil, err
	}
	return NewS3(ctx, cfg)
}

// S3ConfigFromEnv parses s3://BUCKET/PREFIX and reads the AWS variables
// through getenv.
func S3ConfigFromEnv(location string, getenv func(string) string) (S3Config, error) {
	u, err := url.Parse(location)
	if err != nil {
		return S3Config{}, fmt.Errorf("store %q: %w: use s3://BUCKET/PREFIX", location, err)
	}
	if u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" {
		return S3Config{}, fmt.Errorf("store %q: only a bucket and a prefix are allowed: use s3://BUCKET/PREFIX and AWS_ENDPOINT_URL for the server", location)
	}
	if !bucketRE.MatchString(u.Host) || strings.Contains(u.Host, "..") {
		return S3Config{}, fmt.Errorf("store %q: bucket %q is not a valid S3 bucket name (3-63 of a-z, 0-9, '.', '-'): use s3://BUCKET/PREFIX", location, u.Host)
	}
	prefix := strings.TrimPrefix(u.Path, "/")
	if prefix != "" {
		if err := ValidKey(strings.TrimSuffix(prefix, "/")); err != nil {
			return S3Config{}, fmt.Errorf("store %q: prefix %q: segments of [A-Za-z0-9._-], not starting with a dot", location, prefix)
		}
		prefix = strings.TrimSuffix(prefix, "/") + "/"
	}
	cfg := S3Config{
		Bucket:          u.Host,
		Prefix:          prefix,
		Region:          first(getenv("AWS_REGION"), getenv("AWS_DEFAULT_REGION")),
		AccessKeyID:     getenv("AWS_ACCESS_KEY_ID"),
		SecretAccessKey: getenv("AWS_SECRET_ACCESS_KEY"),
		SessionToken:    getenv("AWS_SESSION_TOKEN"),
		Endpoint:        first(getenv("AWS_ENDPOINT_URL_S3"), getenv("AWS_ENDPOINT_URL")),
	}
	var missing []string
	if cfg.Region == "" {
		missing = append(missing, "AWS_REGION")
	}
	if cfg.AccessKeyID == "" {
		missing = append(missing, "AWS_ACCESS_KEY_ID")
	}
	if cfg.SecretAccessKey == "" {
		missing = append(missing, "AWS_SECRET_ACCESS_KEY")
	}
	if len(missing) > 0 {
		return S3Config{}, fmt.Errorf("store %q: set %s (and AWS_ENDPOINT_URL for an S3-compatible server)", location, strings.Join(missing, ", "))
	}
	if cfg.Endpoint != "" {
		e, err := url.Parse(cfg.Endpoint)
		if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
			return S3Config{}, fmt.Errorf("store %q: AWS_ENDPOINT_URL %q is not an http(s) URL: set it like http://127.0.0.1:7070", location, cfg.Endpoint)
		}
	}
	return cfg, nil
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
