package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"net"
	"os"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	modelplanev1 "github.com/modelplane/modelplane/clients/go/modelplane/v1"
	"github.com/modelplane/modelplane/clients/go/oip"
)

// overFourMiB is an answer size grpc-go's default 4 MiB receive limit refuses.
const overFourMiB = 5 << 20

// bigAnswers answers every ModelInfer with overFourMiB bytes of raw output.
type bigAnswers struct {
	oip.UnimplementedGRPCInferenceServiceServer
}

func (bigAnswers) ModelInfer(
	ctx context.Context, req *oip.ModelInferRequest,
) (*oip.ModelInferResponse, error) {
	return &oip.ModelInferResponse{
		ModelName:         req.GetModelName(),
		Id:                req.GetId(),
		RawOutputContents: [][]byte{bytes.Repeat([]byte{7}, overFourMiB)},
	}, nil
}

// dialSidecarInProcess starts an in-process OIP server answering bigAnswers and dials it with
// DialSidecar; both are closed when the test ends.
func dialSidecarInProcess(t *testing.T) *Sidecar {
	t.Helper()
	listener := bufconn.Listen(1 << 20)
	server := grpc.NewServer(grpc.MaxSendMsgSize(math.MaxInt32))
	oip.RegisterGRPCInferenceServiceServer(server, bigAnswers{})
	go server.Serve(listener)
	s, err := DialSidecar("bufconn", Options{DialOptions: []grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return listener.Dial()
		}),
	}})
	if err != nil {
		server.Stop()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		server.Stop()
	})
	return s
}

func TestDialSidecarReceivesAnswersOverFourMiB(t *testing.T) {
	s := dialSidecarInProcess(t)
	got, err := s.Inference.ModelInfer(context.Background(), &oip.ModelInferRequest{
		ModelName: "big", Id: "r1",
	})
	if err != nil {
		t.Fatalf("ModelInfer: %v", err)
	}
	if n := len(got.GetRawOutputContents()[0]); n != overFourMiB || got.GetId() != "r1" {
		t.Errorf("answer: %d bytes, id %q; want %d bytes, id r1", n, got.GetId(), overFourMiB)
	}
}

func TestDialSidecarRefusesWhatDialRefuses(t *testing.T) {
	if _, err := DialSidecar("127.0.0.1:1", Options{Timeout: -2}); err == nil {
		t.Error("DialSidecar took a negative Options.Timeout")
	}
	_, err := DialSidecar("127.0.0.1:1", Options{Principal: "josé"})
	if _, ok := err.(*MetadataError); !ok {
		t.Errorf("DialSidecar with a non-ASCII principal: err = %v, want a *MetadataError", err)
	}
}

// The TestSidecarLive tests need a sidecar: tests/clients/test_go_sidecar_dial.py runs them
// with MODELPLANE_TEST_SIDECAR (its HOST:PORT) and MODELPLANE_TEST_SIDECAR_MODEL (the name of
// the model it serves: an Identity of input x FP32[-1,1024] into output y) set. Without them
// they are skipped.
func liveSidecar(t *testing.T) (*Sidecar, string) {
	t.Helper()
	address, model := os.Getenv("MODELPLANE_TEST_SIDECAR"), os.Getenv("MODELPLANE_TEST_SIDECAR_MODEL")
	if address == "" || model == "" {
		t.Skip("MODELPLANE_TEST_SIDECAR and MODELPLANE_TEST_SIDECAR_MODEL are not set")
	}
	s, err := DialSidecar(address, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, model
}

// identityRequest is rows × 1024 FP32 values of x as raw contents, no two rows alike.
func identityRequest(model string, rows int) *oip.ModelInferRequest {
	raw := make([]byte, rows*1024*4)
	for i := 0; i < rows*1024; i++ {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(float32(i)*0.5-1000))
	}
	return &oip.ModelInferRequest{
		ModelName: model,
		Id:        "go-identity",
		Inputs: []*oip.ModelInferRequest_InferInputTensor{
			{Name: "x", Datatype: "FP32", Shape: []int64{int64(rows), 1024}},
		},
		RawInputContents: [][]byte{raw},
	}
}

func TestSidecarLiveAnswersOverFourMiBAreReceived(t *testing.T) {
	s, model := liveSidecar(t)
	ctx := context.Background()
	ready, err := s.Inference.ModelReady(ctx, &oip.ModelReadyRequest{Name: model})
	if err != nil || !ready.GetReady() {
		t.Fatalf("ModelReady(%s) = %v, %v; want ready", model, ready, err)
	}
	req := identityRequest(model, 2000) // 8,192,000 bytes each way
	got, err := s.Inference.ModelInfer(ctx, req)
	if err != nil {
		t.Fatalf("ModelInfer of 2000 rows: %v", err)
	}
	outputs := got.GetOutputs()
	if len(outputs) != 1 || outputs[0].GetName() != "y" || outputs[0].GetDatatype() != "FP32" {
		t.Fatalf("outputs = %v, want y FP32", outputs)
	}
	if shape := outputs[0].GetShape(); len(shape) != 2 || shape[0] != 2000 || shape[1] != 1024 {
		t.Errorf("shape = %v, want [2000 1024]", shape)
	}
	if got.GetId() != "go-identity" {
		t.Errorf("id = %q, want go-identity", got.GetId())
	}
	// An Identity answers its input bit for bit.
	if !bytes.Equal(got.GetRawOutputContents()[0], req.GetRawInputContents()[0]) {
		t.Error("the answer differs from the input the Identity model was sent")
	}
}

func TestSidecarLiveErrorsCarryTheirReason(t *testing.T) {
	s, model := liveSidecar(t)
	ctx := context.Background()
	req := identityRequest(model, 1)
	req.Inputs[0].Shape = []int64{1, 1023}
	_, err := s.Inference.ModelInfer(ctx, req)
	if status.Code(err) != codes.InvalidArgument || Reason(err) != "WRONG_SHAPE" {
		t.Errorf("ModelInfer of a wrong shape: err = %v (reason %q), want InvalidArgument WRONG_SHAPE", err, Reason(err))
	}
	// The administration service is on the same connection: a sidecar without --baseline
	// says it does not monitor drift.
	_, err = s.Admin.GetDriftReport(ctx, &modelplanev1.GetDriftReportRequest{})
	if status.Code(err) != codes.FailedPrecondition || Reason(err) != "DRIFT_NOT_CONFIGURED" {
		t.Errorf("GetDriftReport: err = %v (reason %q), want FailedPrecondition DRIFT_NOT_CONFIGURED", err, Reason(err))
	}
}
