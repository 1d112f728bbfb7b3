// Command register registers an ONNX file as a new model version and runs a release gate on
// it, as a CI job written in Go would:
//
//	go run ./examples/register -server 127.0.0.1:50051 -model fraud -onnx model.onnx \
//	    -target production [-as ci-bot]
//
// The model is created when it does not exist yet. Exit code 0 when the gate passes, 1 when
// it fails, 2 on a usage error or an unreadable file, 3 when the server answers an error (its
// status and reason are printed), 4 when it is unavailable (unreachable, or too busy to
// answer).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelplane/modelplane/clients/go/client"
	modelplanev1 "github.com/modelplane/modelplane/clients/go/modelplane/v1"
)

func main() {
	os.Exit(run())
}

func run() int {
	server := flag.String("server", envOr("MODELPLANE_SERVER", "127.0.0.1:50051"), "control plane HOST:PORT")
	model := flag.String("model", "", "model id (created when missing)")
	onnxPath := flag.String("onnx", "", "the ONNX file")
	target := flag.String("target", "production", "gate target: an alias or deployments/NAME")
	principal := flag.String("as", "ci", "principal named to a server without access control")
	flag.Parse()
	if *model == "" || *onnxPath == "" {
		fmt.Fprintln(os.Stderr, "usage: register -model MODEL -onnx FILE [-server HOST:PORT] [-target T]")
		return 2
	}
	onnx, err := os.ReadFile(*onnxPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 2
	}
	c, err := client.Dial(*server, client.Options{Principal: *principal})
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 4
	}
	defer c.Close()
	ctx := context.Background()

	if _, err := c.CreateModel(ctx, *model, "registered from Go"); err == nil {
		fmt.Printf("created models/%s\n", *model)
	} else if status.Code(err) != codes.AlreadyExists {
		return report(err)
	}
	version, err := c.RegisterVersion(ctx, *model, onnx, &modelplanev1.CreateModelVersionRequest{
		Description: "registered by the Go example",
		Labels:      map[string]string{"source": "go-example"},
	})
	if err != nil {
		return report(err)
	}
	in := version.GetSignature().GetInputs()
	shown := ""
	if len(in) > 0 {
		dims := make([]string, len(in[0].GetShape()))
		for i, d := range in[0].GetShape() {
			dims[i] = fmt.Sprint(d)
		}
		shown = fmt.Sprintf(", input %s %s[%s]", in[0].GetName(), in[0].GetDatatype(), strings.Join(dims, ","))
	}
	fmt.Printf("registered %s: sha256 %s%s\n", version.GetName(), version.GetArtifact().GetSha256(), shown)

	decision, err := c.EvaluateGate(ctx, *model, version.GetVersion(), *target)
	if err != nil {
		return report(err)
	}
	for _, r := range decision.GetResults() {
		fmt.Printf("[%s] %s\n", r.GetOutcome(), r.GetExpression())
	}
	if decision.GetPassed() {
		fmt.Printf("gate %s: passed\n", *target)
		return 0
	}
	fmt.Printf("gate %s: failed\n", *target)
	return 1
}

func report(err error) int {
	st := status.Convert(err)
	code := statusName(st.Code())
	if reason := client.Reason(err); reason != "" {
		fmt.Fprintf(os.Stderr, "error: %s %s: %s\n", code, reason, st.Message())
	} else {
		fmt.Fprintf(os.Stderr, "error: %s: %s\n", code, st.Message())
	}
	if st.Code() == codes.Unavailable {
		return 4
	}
	return 3
}

// statusNames are gRPC's canonical status names by code: codes.Code's String spells
// codes.Canceled "Canceled", gRPC "CANCELLED".
var statusNames = [...]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// statusName is a code as gRPC names it, e.g. "INVALID_ARGUMENT"; UNKNOWN outside the 17.
func statusName(c codes.Code) string {
	if int(c) < len(statusNames) {
		return statusNames[c]
	}
	return "UNKNOWN"
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
