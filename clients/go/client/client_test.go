package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	modelplanev1 "github.com/modelplane/modelplane/clients/go/modelplane/v1"
)

// fakeBlobs stores nothing: UploadBlob answers the digest of what it read, or, with hang set,
// reads the request and never answers (until the test ends).
type fakeBlobs struct {
	modelplanev1.UnimplementedBlobServiceServer
	hang    bool
	release chan struct{}
	// pause is how long DownloadBlob waits between its two chunks.
	pause time.Duration

	mu sync.Mutex
	// deadlines says, per UploadBlob, whether the call came with a deadline.
	deadlines []bool
}

func (f *fakeBlobs) UploadBlob(stream modelplanev1.BlobService_UploadBlobServer) error {
	_, ok := stream.Context().Deadline()
	f.mu.Lock()
	f.deadlines = append(f.deadlines, ok)
	f.mu.Unlock()
	h := sha256.New()
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		h.Write(m.GetChunk())
	}
	if f.hang {
		// Not even the call's own deadline ends it, like a server stuck elsewhere.
		<-f.release
		return status.Error(codes.Internal, "released")
	}
	sum := hex.EncodeToString(h.Sum(nil))
	return stream.SendAndClose(&modelplanev1.Blob{Name: "blobs/" + sum, Sha256: sum})
}

func (f *fakeBlobs) DownloadBlob(
	req *modelplanev1.DownloadBlobRequest, stream modelplanev1.BlobService_DownloadBlobServer,
) error {
	if err := stream.Send(&modelplanev1.DownloadBlobResponse{Chunk: []byte("a")}); err != nil {
		return err
	}
	select {
	case <-time.After(f.pause):
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
	return stream.Send(&modelplanev1.DownloadBlobResponse{Chunk: []byte("b")})
}

// fakeRegistry records CreateModelVersion requests and refuses a request id seen before,
// as the control plane does for a different request.
type fakeRegistry struct {
	modelplanev1.UnimplementedRegistryServiceServer
	mu       sync.Mutex
	requests []*modelplanev1.CreateModelVersionRequest
	// deadlines says, per CreateModelVersion, whether the call came with a deadline.
	deadlines []bool
}

func (f *fakeRegistry) CreateModelVersion(
	ctx context.Context, req *modelplanev1.CreateModelVersionRequest,
) (*modelplanev1.ModelVersion, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := ctx.Deadline()
	f.deadlines = append(f.deadlines, ok)
	for _, seen := range f.requests {
		if seen.GetRequestId() == req.GetRequestId() {
			return nil, status.Error(codes.AlreadyExists, "REQUEST_ID_REUSED")
		}
	}
	f.requests = append(f.requests, req)
	return &modelplanev1.ModelVersion{
		Name:    req.GetParent() + "/versions/1",
		Version: 1,
	}, nil
}

// dialInProcess starts an in-process server with the services register adds and dials it
// with opts; both are closed when the test ends.
func dialInProcess(t *testing.T, opts Options, register func(*grpc.Server)) *Client {
	t.Helper()
	listener := bufconn.Listen(1 << 20)
	server := grpc.NewServer()
	register(server)
	go server.Serve(listener)
	opts.DialOptions = []grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return listener.Dial()
		}),
	}
	c, err := Dial("bufconn", opts)
	if err != nil {
		server.Stop()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		server.Stop()
	})
	return c
}

// serve starts an in-process server with the fakes and dials it with opts.
func serve(t *testing.T, blobs *fakeBlobs, registry *fakeRegistry, opts Options) *Client {
	t.Helper()
	blobs.release = make(chan struct{})
	c := dialInProcess(t, opts, func(server *grpc.Server) {
		modelplanev1.RegisterBlobServiceServer(server, blobs)
		modelplanev1.RegisterRegistryServiceServer(server, registry)
	})
	// Runs before the server stops (cleanups run last first): held uploads end.
	t.Cleanup(func() { close(blobs.release) })
	return c
}

func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func TestRegisterVersionLeavesTheTemplateUnchanged(t *testing.T) {
	registry := &fakeRegistry{}
	c := serve(t, &fakeBlobs{}, registry, Options{})
	template := &modelplanev1.CreateModelVersionRequest{
		Description: "nightly",
		Labels:      map[string]string{"source": "ci"},
	}
	artifacts := map[string][]byte{"fraud": []byte("onnx-1"), "churn": []byte("onnx-2")}
	for _, model := range []string{"fraud", "churn"} {
		v, err := c.RegisterVersion(context.Background(), model, artifacts[model], template)
		if err != nil {
			t.Fatalf("RegisterVersion(%s): %v", model, err)
		}
		if want := "models/" + model + "/versions/1"; v.GetName() != want {
			t.Errorf("RegisterVersion(%s) = %s, want %s", model, v.GetName(), want)
		}
	}
	if template.GetParent() != "" || template.GetArtifactSha256() != "" || template.GetRequestId() != "" {
		t.Errorf("template was modified: %v", template)
	}
	if len(registry.requests) != 2 {
		t.Fatalf("server got %d requests, want 2", len(registry.requests))
	}
	for i, model := range []string{"fraud", "churn"} {
		req := registry.requests[i]
		if req.GetParent() != "models/"+model {
			t.Errorf("request %d parent = %q, want models/%s", i, req.GetParent(), model)
		}
		if req.GetArtifactSha256() != digest(artifacts[model]) {
			t.Errorf("request %d artifact = %q, want the digest of %s", i, req.GetArtifactSha256(), model)
		}
		if req.GetDescription() != "nightly" || req.GetLabels()["source"] != "ci" {
			t.Errorf("request %d lost the template's fields: %v", i, req)
		}
		if req.GetRequestId() == "" {
			t.Errorf("request %d has no request id", i)
		}
	}
}

func TestRegisterVersionKeepsARequestIdSetInTheTemplate(t *testing.T) {
	registry := &fakeRegistry{}
	c := serve(t, &fakeBlobs{}, registry, Options{})
	template := &modelplanev1.CreateModelVersionRequest{RequestId: "fixed-id"}
	if _, err := c.RegisterVersion(context.Background(), "fraud", []byte("onnx"), template); err != nil {
		t.Fatal(err)
	}
	if got := registry.requests[0].GetRequestId(); got != "fixed-id" {
		t.Errorf("request id = %q, want fixed-id", got)
	}
	// The same request id again is the server's to refuse, as it is for any reuse.
	_, err := c.RegisterVersion(context.Background(), "fraud", []byte("onnx"), template)
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("reused request id: err = %v, want AlreadyExists", err)
	}
	if got := RequestIDOf(err); got != "fixed-id" {
		t.Errorf("RequestIDOf(err) = %q, want fixed-id", got)
	}
}

func TestDialRefusesANegativeTimeoutOtherThanNoTimeout(t *testing.T) {
	for _, timeout := range []time.Duration{-time.Nanosecond * 2, -time.Second, math.MinInt64} {
		c, err := Dial("127.0.0.1:50051", Options{Timeout: timeout})
		if err == nil {
			c.Close()
			t.Errorf("Dial with Timeout %v: no error", timeout)
			continue
		}
		if !strings.Contains(err.Error(), "is negative") || !strings.Contains(err.Error(), "NoTimeout") {
			t.Errorf("Dial with Timeout %v: error %q does not say what to give", timeout, err)
		}
	}
}

func TestNoTimeoutPutsNoDeadlineOnCallsAndTheDefaultDoes(t *testing.T) {
	for _, tc := range []struct {
		timeout time.Duration
		want    bool
	}{{NoTimeout, false}, {0, true}, {time.Minute, true}} {
		blobs, registry := &fakeBlobs{}, &fakeRegistry{}
		c := serve(t, blobs, registry, Options{Timeout: tc.timeout})
		if _, err := c.RegisterVersion(context.Background(), "fraud", []byte("onnx"), nil); err != nil {
			t.Fatalf("Timeout %v: %v", tc.timeout, err)
		}
		blobs.mu.Lock()
		upload := blobs.deadlines
		blobs.mu.Unlock()
		registry.mu.Lock()
		create := registry.deadlines
		registry.mu.Unlock()
		if len(upload) != 1 || upload[0] != tc.want || len(create) != 1 || create[0] != tc.want {
			t.Errorf("Timeout %v: deadline on UploadBlob %v, CreateModelVersion %v; want %v",
				tc.timeout, upload, create, tc.want)
		}
	}
}

// within runs call and fails the test when it has not returned after limit.
func within(t *testing.T, limit time.Duration, call func() error) (error, time.Duration) {
	t.Helper()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- call() }()
	select {
	case err := <-done:
		return err, time.Since(start)
	case <-time.After(limit):
		t.Fatalf("still blocked after %s", limit)
		return nil, 0
	}
}

func TestTimeoutBoundsUploadBlobAgainstAServerThatNeverAnswers(t *testing.T) {
	timeout := 300 * time.Millisecond
	c := serve(t, &fakeBlobs{hang: true}, &fakeRegistry{}, Options{Timeout: timeout})
	err, took := within(t, 10*time.Second, func() error {
		_, err := c.UploadBlob(context.Background(), []byte("onnx"), "application/onnx")
		return err
	})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("UploadBlob: err = %v, want DeadlineExceeded", err)
	}
	// Not before its deadline; the code above says it was the deadline that ended it.
	if took < timeout {
		t.Errorf("UploadBlob returned after %s, before its %s deadline", took, timeout)
	}
}

func TestTimeoutBoundsRegisterVersionAgainstAServerThatNeverAnswers(t *testing.T) {
	timeout := 300 * time.Millisecond
	registry := &fakeRegistry{}
	c := serve(t, &fakeBlobs{hang: true}, registry, Options{Timeout: timeout})
	err, _ := within(t, 10*time.Second, func() error {
		_, err := c.RegisterVersion(context.Background(), "fraud", []byte("onnx"), nil)
		return err
	})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("RegisterVersion: err = %v, want DeadlineExceeded", err)
	}
	if len(registry.requests) != 0 {
		t.Errorf("a version was registered without an uploaded artifact")
	}
}

func TestCallerDeadlineWinsOverTimeoutForUploadBlob(t *testing.T) {
	c := serve(t, &fakeBlobs{hang: true}, &fakeRegistry{}, Options{Timeout: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err, _ := within(t, 10*time.Second, func() error {
		_, err := c.UploadBlob(ctx, []byte("onnx"), "application/onnx")
		return err
	})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("UploadBlob: err = %v, want DeadlineExceeded", err)
	}
}

func TestUploadBlobWithinTheTimeoutSucceeds(t *testing.T) {
	c := serve(t, &fakeBlobs{}, &fakeRegistry{}, Options{Timeout: 5 * time.Second})
	data := make([]byte, 2*ChunkBytes+1)
	blob, err := c.UploadBlob(context.Background(), data, "application/onnx")
	if err != nil {
		t.Fatal(err)
	}
	if blob.GetSha256() != digest(data) {
		t.Errorf("sha256 = %s, want %s", blob.GetSha256(), digest(data))
	}
}

// Server streams (DownloadBlob, ExportAuditEvents, WatchDeployment) may run longer than
// Timeout; they end with their context.
func TestTimeoutLeavesServerStreamsAlone(t *testing.T) {
	timeout := 200 * time.Millisecond
	c := serve(t, &fakeBlobs{pause: 3 * timeout}, &fakeRegistry{}, Options{Timeout: timeout})
	stream, err := c.Blobs.DownloadBlob(context.Background(), &modelplanev1.DownloadBlobRequest{Name: "blobs/x"})
	if err != nil {
		t.Fatal(err)
	}
	got := ""
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("DownloadBlob: %v after %q", err, got)
		}
		got += string(m.GetChunk())
	}
	if got != "ab" {
		t.Errorf("DownloadBlob read %q, want ab", got)
	}
}

func TestNamesTakeAnIDOrAFullName(t *testing.T) {
	for _, model := range []string{"fraud", "models/fraud"} {
		if got := ModelName(model); got != "models/fraud" {
			t.Errorf("ModelName(%q) = %q, want models/fraud", model, got)
		}
		if got := VersionName(model, 3); got != "models/fraud/versions/3" {
			t.Errorf("VersionName(%q, 3) = %q, want models/fraud/versions/3", model, got)
		}
	}
}
