// Command register registers an ONNX file as a new model version and runs a release gate on
// it, as a CI job written in Go would:
//
//	go run ./examples/register -server 127.0.0.1:50051 -model fraud -onnx model.onnx \
//	    -target production [-as ci-bot] [-timeout 90s]
//
// The model is created when it does not exist yet. Exit code 0 when the gate passes, 1 when
// it fails, 2 on a usage error (a -server that is neither HOST:PORT nor a gRPC target such as
// unix:///tmp/cp.sock or dns:///cp.internal:50051, a negative -timeout included) or an
// unreadable file, 3 when the server answers an error (its status and reason are printed), 4
// when it could not be reached or did not answer in time (UNAVAILABLE: unreachable, or too
// busy to answer; DEADLINE_EXCEEDED: no answer within -timeout), as the `modelplane` CLI and
// the Node example exit. -timeout (default 60s) bounds each call; 0 is none.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
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
	server := flag.String("server", envOr("MODELPLANE_SERVER", "127.0.0.1:50051"), "control plane HOST:PORT, or a gRPC target (unix:PATH, dns:///HOST:PORT, ...)")
	model := flag.String("model", "", "model id (created when missing)")
	onnxPath := flag.String("onnx", "", "the ONNX file")
	target := flag.String("target", "production", "gate target: an alias or deployments/NAME")
	principal := flag.String("as", "ci", "principal named to a server without access control")
	timeout := flag.Duration("timeout", client.DefaultTimeout, "deadline of each call (e.g. 90s, 5m); 0 is none")
	flag.Parse()
	const usage = "usage: register -model MODEL -onnx FILE [-server HOST:PORT|TARGET] [-target T] [-as P] [-timeout D]"
	if *model == "" || *onnxPath == "" {
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
	// A malformed address is the caller's mistake (2), not an unreachable server (4).
	if err := checkAddress(*server); err != nil {
		fmt.Fprintf(os.Stderr, "error: -server: %v\n%s\n", err, usage)
		return 2
	}
	if *timeout < 0 {
		fmt.Fprintf(os.Stderr, "error: -timeout: %v is negative (0 is none)\n%s\n", *timeout, usage)
		return 2
	}
	callTimeout := *timeout
	if callTimeout == 0 {
		callTimeout = client.NoTimeout
	}
	onnx, err := os.ReadFile(*onnxPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 2
	}
	c, err := client.Dial(*server, client.Options{Principal: *principal, Timeout: callTimeout})
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
	return exitCode(st.Code())
}

// exitCode is 4 when the server could not be reached or did not answer in time, 3 when it
// answered an error, as the `modelplane` CLI exits.
func exitCode(code codes.Code) int {
	if code == codes.Unavailable || code == codes.DeadlineExceeded {
		return 4
	}
	return 3
}

// targetSchemes are the prefixes of gRPC target URIs (unix:///tmp/cp.sock,
// dns:///cp.internal:50051, ...) that checkAddress lets through to grpc.Dial unchecked: the
// `modelplane` CLI's --server takes the same ones (modelplane/cli/_common.py), and
// passthrough: besides, which grpc-go resolves.
var targetSchemes = []string{
	"dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:", "passthrough:",
}

// checkAddress accepts HOST:PORT (a host name, an IPv4 address or an IPv6 address in
// brackets) with a port from 1 to 65535, or a gRPC target URI with one of targetSchemes,
// which it leaves to grpc.Dial.
func checkAddress(address string) error {
	for _, scheme := range targetSchemes {
		if strings.HasPrefix(address, scheme) {
			return nil
		}
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("%v (give HOST:PORT, e.g. 127.0.0.1:50051 or [::1]:50051, or a gRPC target such as unix:///tmp/cp.sock)", err)
	}
	if host == "" || strings.ContainsAny(host, " \t\n/") {
		return fmt.Errorf("address %s: %q is not a host name or IP address", address, host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("address %s: port %q is not from 1 to 65535", address, port)
	}
	return nil
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
