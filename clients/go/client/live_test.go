package client

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	modelplanev1 "github.com/modelplane/modelplane/clients/go/modelplane/v1"
)

// The TestLive tests need a control plane: tests/clients/test_go_client.py runs them with
// MODELPLANE_TEST_SERVER (its HOST:PORT) and MODELPLANE_TEST_ONNX (an ONNX file it accepts)
// set. Without them they are skipped.
func live(t *testing.T) (*Client, []byte) {
	t.Helper()
	address, onnxPath := os.Getenv("MODELPLANE_TEST_SERVER"), os.Getenv("MODELPLANE_TEST_ONNX")
	if address == "" || onnxPath == "" {
		t.Skip("MODELPLANE_TEST_SERVER and MODELPLANE_TEST_ONNX are not set")
	}
	onnx, err := os.ReadFile(onnxPath)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(address, Options{Principal: "go-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, onnx
}

// uniqueModel is a model id no other test (or run against the same server) uses.
func uniqueModel(prefix string) string {
	return prefix + "-" + RequestID()[:8]
}

func TestLiveCreateModelRetriedWithItsRequestIDReplaysTheFirstAnswer(t *testing.T) {
	c, _ := live(t)
	ctx := context.Background()
	model, id := uniqueModel("go-retry"), RequestID()
	first, err := c.CreateModel(ctx, model, "first", WithRequestID(id))
	if err != nil {
		t.Fatal(err)
	}
	// The retry of a call whose answer was lost: the same arguments and request id.
	again, err := c.CreateModel(ctx, model, "first", WithRequestID(id))
	if err != nil {
		t.Fatalf("CreateModel retried with its request id: %v", err)
	}
	if !proto.Equal(first, again) {
		t.Errorf("retry answered %v, want the first answer %v", again, first)
	}
	// Without the id it is another request, refused as the model exists; its error says
	// which id it was sent with.
	_, err = c.CreateModel(ctx, model, "first")
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("CreateModel with a new request id: err = %v, want AlreadyExists", err)
	}
	if got := RequestIDOf(err); got == "" || got == id {
		t.Errorf("RequestIDOf(err) = %q, want the new request id", got)
	}
}

func TestLiveAFailedCallsErrorCarriesItsRequestIDAndStatus(t *testing.T) {
	c, _ := live(t)
	id := RequestID()
	_, err := c.CreateModel(context.Background(), "Bad_Id", "", WithRequestID(id))
	if got := RequestIDOf(err); got != id {
		t.Errorf("RequestIDOf(err) = %q, want %s", got, id)
	}
	if status.Code(err) != codes.InvalidArgument || Reason(err) != "INVALID_NAME" {
		t.Errorf("err = %v (reason %q), want InvalidArgument INVALID_NAME", err, Reason(err))
	}
}

func TestLiveEvaluateGateRetriedWithItsRequestIDRecordsOneDecision(t *testing.T) {
	c, onnx := live(t)
	ctx := context.Background()
	model := uniqueModel("go-gate")
	if _, err := c.CreateModel(ctx, model, ""); err != nil {
		t.Fatal(err)
	}
	v, err := c.RegisterVersion(ctx, model, onnx, nil)
	if err != nil {
		t.Fatal(err)
	}
	decisions := func() []*modelplanev1.GateDecision {
		t.Helper()
		listed, err := c.Governance.ListGateDecisions(ctx, &modelplanev1.ListGateDecisionsRequest{
			Parent: v.GetName(),
		})
		if err != nil {
			t.Fatal(err)
		}
		return listed.GetDecisions()
	}
	id := RequestID()
	first, err := c.EvaluateGate(ctx, model, v.GetVersion(), "production", WithRequestID(id))
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.EvaluateGate(ctx, model, v.GetVersion(), "production", WithRequestID(id))
	if err != nil {
		t.Fatalf("EvaluateGate retried with its request id: %v", err)
	}
	if !proto.Equal(first, again) {
		t.Errorf("retry answered %v, want the first decision %v", again, first)
	}
	if got := decisions(); len(got) != 1 || got[0].GetName() != first.GetName() {
		t.Fatalf("decisions recorded = %v, want only %s", got, first.GetName())
	}
	// A call without the id is a new evaluation, recorded as another decision.
	if _, err := c.EvaluateGate(ctx, model, v.GetVersion(), "production"); err != nil {
		t.Fatal(err)
	}
	if got := decisions(); len(got) != 2 {
		t.Errorf("%d decisions recorded after a new evaluation, want 2", len(got))
	}
}

// An answer over grpc-go's default 4 MiB receive limit: a version whose lineage parameters
// add up to about 5.4 MB (each value under the server's 10,000-character limit, the request
// under its 16 MiB one).
func TestLiveAnswersOverFourMiBAreReceived(t *testing.T) {
	c, onnx := live(t)
	ctx := context.Background()
	model := uniqueModel("go-big")
	if _, err := c.CreateModel(ctx, model, ""); err != nil {
		t.Fatal(err)
	}
	parameters := map[string]string{}
	value := strings.Repeat("x", 9000)
	for i := 0; i < 600; i++ {
		parameters[fmt.Sprintf("p%03d", i)] = value
	}
	v, err := c.RegisterVersion(ctx, model, onnx, &modelplanev1.CreateModelVersionRequest{
		Parameters: parameters,
	})
	if err != nil {
		t.Fatalf("RegisterVersion: %v", err)
	}
	if size := proto.Size(v); size <= 4<<20 {
		t.Fatalf("the answer is %d bytes, want over 4 MiB", size)
	}
	got, err := c.Registry.GetModelVersion(ctx, &modelplanev1.GetModelVersionRequest{Name: v.GetName()})
	if err != nil {
		t.Fatalf("GetModelVersion: %v", err)
	}
	if n := len(got.GetLineage().GetParameters()); n != len(parameters) {
		t.Errorf("GetModelVersion answered %d parameters, want %d", n, len(parameters))
	}
}

// A watched deployment that is deleted ends the stream NotFound (DEPLOYMENT_NOT_FOUND), never
// with io.EOF, which a Go watcher would take for "nothing more will come" also when the
// server merely restarts.
func TestLiveAWatchEndsNotFoundWhenItsDeploymentIsDeleted(t *testing.T) {
	c, onnx := live(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	model := uniqueModel("go-watch")
	if _, err := c.CreateModel(ctx, model, ""); err != nil {
		t.Fatal(err)
	}
	v, err := c.RegisterVersion(ctx, model, onnx, nil)
	if err != nil {
		t.Fatal(err)
	}
	deployment := uniqueModel("w")
	_, err = c.Deployments.CreateDeployment(ctx, &modelplanev1.CreateDeploymentRequest{
		DeploymentId: deployment,
		Deployment:   &modelplanev1.Deployment{Model: ModelName(model), ChampionVersion: v.GetVersion()},
		RequestId:    RequestID(),
	})
	if err != nil {
		t.Fatal(err)
	}
	name := "deployments/" + deployment
	stream, err := c.Deployments.WatchDeployment(ctx, &modelplanev1.WatchDeploymentRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetGeneration() != 1 {
		t.Fatalf("first state: %v, %v; want generation 1", first, err)
	}
	_, err = c.Deployments.DeleteDeployment(ctx, &modelplanev1.DeleteDeploymentRequest{
		Name: name, RequestId: RequestID(),
	})
	if err != nil {
		t.Fatal(err)
	}
	for err == nil {
		_, err = stream.Recv() // heartbeats may come first
	}
	if err == io.EOF {
		t.Fatal("the watch ended with io.EOF, want NotFound DEPLOYMENT_NOT_FOUND")
	}
	if status.Code(err) != codes.NotFound || Reason(err) != "DEPLOYMENT_NOT_FOUND" {
		t.Errorf("watch ended with %v (reason %q), want NotFound DEPLOYMENT_NOT_FOUND", err, Reason(err))
	}
}
