package client

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

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
