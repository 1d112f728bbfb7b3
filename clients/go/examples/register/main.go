// Command register registers an ONNX file as a new model version and runs a release gate on
// it, as a CI job written in Go would:
//
//	go run ./examples/register -server 127.0.0.1:50051 -model fraud -onnx model.onnx \
//	    -target production [-as ci-bot] [-timeout 90s] [-token TOKEN] \
//	    [-tls-ca ca.pem | -tls] [-tls-cert me.pem -tls-key me.key]
//
// The model is created when it does not exist yet. Exit code 0 when the gate passes, 1 when
// it fails, 2 on a usage error (a -server that is neither HOST:PORT nor a gRPC target such as
// unix:///tmp/cp.sock or dns:///cp.internal:50051, a negative -timeout, an -as or -token that
// gRPC metadata cannot carry included) or an unreadable file (the ONNX file or a TLS file), 3
// when the server answers an error (its status and reason are printed: UNAUTHENTICATED
// MISSING_CREDENTIALS from a control plane with access control when no token is given), 4
// when it could not be reached or did not answer in time (UNAVAILABLE: unreachable, or too
// busy to answer; DEADLINE_EXCEEDED: no answer within -timeout), as the `modelplane` CLI and
// the Node example exit. -timeout (default 60s) bounds each call; 0 is none.
//
// As the `modelplane` CLI: -token (default: env MODELPLANE_TOKEN) is the bearer token for a
// control plane with access control; -tls-ca FILE (env MODELPLANE_TLS_CA) connects with TLS
// trusting that PEM CA bundle, -tls with the system's CAs; -tls-cert and -tls-key (env
// MODELPLANE_TLS_CERT, MODELPLANE_TLS_KEY) present a client certificate (mutual TLS).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
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
	token := flag.String("token", os.Getenv("MODELPLANE_TOKEN"), "bearer token (or JWT) for a server with access control (env MODELPLANE_TOKEN)")
	tlsCA := flag.String("tls-ca", os.Getenv("MODELPLANE_TLS_CA"), "connect with TLS, trusting this PEM CA bundle (env MODELPLANE_TLS_CA)")
	tlsCert := flag.String("tls-cert", os.Getenv("MODELPLANE_TLS_CERT"), "client certificate (PEM) for mutual TLS (env MODELPLANE_TLS_CERT)")
	tlsKey := flag.String("tls-key", os.Getenv("MODELPLANE_TLS_KEY"), "private key (PEM) of -tls-cert (env MODELPLANE_TLS_KEY)")
	systemTLS := flag.Bool("tls", false, "connect with TLS, trusting the system's CA certificates")
	flag.Parse()
	const usage = "usage: register -model MODEL -onnx FILE [-server HOST:PORT|TARGET] [-target T] [-as P] [-timeout D] " +
		"[-token TOKEN] [-tls-ca FILE | -tls] [-tls-cert FILE -tls-key FILE]"
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
	transport, err := tlsDialOptions(*tlsCA, *tlsCert, *tlsKey, *systemTLS)
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n%s\n", err, usage)
		return 2
	}
	c, err := client.Dial(*server, client.Options{
		Principal: *principal, Token: *token, Timeout: callTimeout, DialOptions: transport,
	})
	if err != nil {
		// An -as or -token that gRPC metadata cannot carry is the caller's mistake (2).
		var bad *client.MetadataError
		if errors.As(err, &bad) {
			flagOf := map[string]string{"principal": "-as", "token": "-token"}
			fmt.Fprintf(os.Stderr, "error: %s: %v\n%s\n", flagOf[bad.Field], err, usage)
			return 2
		}
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

// tlsDialOptions are the dial options for the TLS flags, as the `modelplane` CLI takes them:
// TLS when any is given, trusting caFile (or the system's CAs), presenting certFile and
// keyFile (given together) for mutual TLS; none (plaintext) when none is. A file that cannot
// be read or holds no PEM certificate or key is an error naming its flag.
func tlsDialOptions(caFile, certFile, keyFile string, system bool) ([]grpc.DialOption, error) {
	if caFile == "" && certFile == "" && keyFile == "" && !system {
		return nil, nil
	}
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("-tls-ca: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-tls-ca: %s holds no PEM certificate", caFile)
		}
		config.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("-tls-cert and -tls-key: give both (mutual TLS) or neither")
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("-tls-cert, -tls-key: %v", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(config))}, nil
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
