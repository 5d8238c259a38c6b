// Package s3test starts a real S3-compatible server for tests: versitygw
// (Apache-2.0, pure Go) serving a temporary folder with its posix
// backend, on a loopback port, with test credentials and one bucket.
//
// versitygw enforces If-None-Match and If-Match on PutObject, which the
// store's conformance suite checks, so the S3 store's create-once and
// compare-and-swap run against a real server, not a fake. .ci/run
// installs the pinned Version; outside CI a missing binary skips the
// test with the command that installs it.
package s3test

import (
	"context"
	"errors"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Version is the versitygw release the tests run; .ci/run installs the
// same one.
const Version = "v1.8.0"

// Install is the command that puts versitygw on PATH.
const Install = "go install github.com/versity/versitygw/cmd/versitygw@" + Version

const (
	region    = "us-east-1"
	accessKey = "git-relay-test"
	secretKey = "git-relay-test-secret-not-for-production"
	bucket    = "git-relay-test"
	// startTimeout is generous: the machine is shared with other test
	// runs, and the server's first start reads its whole binary.
	startTimeout = 60 * time.Second
)

// Server is a running versitygw.
type Server struct {
	// Endpoint is http://127.0.0.1:PORT.
	Endpoint string
	// Bucket exists and is empty when Start returns.
	Bucket          string
	Region          string
	AccessKeyID     string
	SecretAccessKey string
	// Dir is the folder the server keeps its buckets in.
	Dir string
	// PID is the server's process id (a benchmark reads its CPU time).
	PID int
}

// Env is the AWS variables that point a client (store.Open, or a relay
// server started as a process) at this server.
func (s *Server) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL=" + s.Endpoint,
		"AWS_REGION=" + s.Region,
		"AWS_ACCESS_KEY_ID=" + s.AccessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretAccessKey,
	}
}

// Setenv sets Env in the test's environment (so not with t.Parallel).
func (s *Server) Setenv(t testing.TB) {
	t.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

// URL is the store location s3://BUCKET/PREFIX.
func (s *Server) URL(prefix string) string {
	return "s3://" + s.Bucket + "/" + prefix
}

// Binary finds versitygw on PATH, then in $GOBIN and $GOPATH/bin, where
// `go install` puts it.
func Binary() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	var dirs []string
	if gobin := os.Getenv("GOBIN"); gobin != "" {
		dirs = append(dirs, gobin)
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		gopath = build.Default.GOPATH // $HOME/go
	}
	for _, gp := range filepath.SplitList(gopath) {
		dirs = append(dirs, filepath.Join(gp, "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("versitygw not found on PATH, in $GOBIN or in $GOPATH/bin: run `%s`", Install)
}

// Start starts a server that is killed when the test ends. Without the
// binary the test is skipped, or fails under CI=true.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("s3test: %v (CI installs it in .ci/run)", err)
		}
		t.Skipf("s3test: %v", err)
	}
	s, stop, err := launch(bin, t.TempDir())
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	t.Cleanup(stop)
	return s
}

// Launch starts a server keeping its buckets and logs under dir, for a
// program that is not a test (a benchmark); stop kills it.
func Launch(dir string) (s *Server, stop func(), err error) {
	bin, err := Binary()
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	return launch(bin, dir)
}

func launch(bin, dir string) (*Server, func(), error) {
	s := &Server{
		Bucket:          bucket,
		Region:          region,
		AccessKeyID:     accessKey,
		SecretAccessKey: secretKey,
		Dir:             filepath.Join(dir, "root"),
	}
	if err := os.Mkdir(s.Dir, 0o700); err != nil {
		return nil, nil, err
	}
	// The port is chosen free and then handed to the server, so another
	// process may take it in between; a server that exits at once is
	// started again on another port.
	var stop func()
	var err error
	for try := range 3 {
		logPath := filepath.Join(dir, "versitygw-"+strconv.Itoa(try)+".log")
		if stop, err = s.start(bin, logPath); err == nil {
			break
		}
	}
	if err != nil {
		return nil, nil, err
	}
	if err := s.createBucket(); err != nil {
		stop()
		return nil, nil, fmt.Errorf("create bucket %q: %w", s.Bucket, err)
	}
	return s, stop, nil
}

func (s *Server) start(bin, logPath string) (func(), error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	// The port was free a moment ago; another test's server may take it
	// before versitygw binds it. A health path of its own, which no
	// other server answers 200, makes the readiness check this one's.
	health := "/health-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin,
		"--port", addr,
		"--region", s.Region,
		"--health", health,
		"--quiet",
		"posix", s.Dir)
	// The root credentials go through the environment, not argv.
	cmd.Env = append(os.Environ(),
		"ROOT_ACCESS_KEY_ID="+s.AccessKeyID,
		"ROOT_SECRET_ACCESS_KEY="+s.SecretAccessKey)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	s.Endpoint, s.PID = "http://"+addr, cmd.Process.Pid
	if err := waitReady(s.Endpoint+health, exited); err != nil {
		stop()
		out, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("versitygw on %s: %w; its log:\n%s", addr, err, out)
	}
	return stop, nil
}

// waitReady polls the health endpoint until it answers 200, the server
// exits, or startTimeout passes.
func waitReady(url string, exited <-chan error) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("exited before it was ready: %v", err)
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			return errors.New("not ready after " + startTimeout.String())
		}
	}
}

func (s *Server) createBucket() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	_, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(s.Bucket)})
	return err
}

// Client is an SDK client for the server, for tests that look at the
// bucket behind a store's back.
func (s *Server) Client() *s3.Client {
	return s3.New(s3.Options{
		Region:       s.Region,
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: s.AccessKeyID, SecretAccessKey: s.SecretAccessKey}, nil
		}),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
