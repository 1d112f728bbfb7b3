package main

import (
	"testing"

	"google.golang.org/grpc/codes"
)

func TestStatusNameIsGRPCsCanonicalName(t *testing.T) {
	want := map[codes.Code]string{
		codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
		codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
		codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
		codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
		codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
		codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
		codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
		codes.Unauthenticated: "UNAUTHENTICATED", codes.Code(99): "UNKNOWN",
	}
	for code, name := range want {
		if got := statusName(code); got != name {
			t.Errorf("statusName(%d) = %q, want %q", code, got, name)
		}
	}
}

func TestExitCodeIs4WhenTheServerWasNotReachedOrDidNotAnswerInTime(t *testing.T) {
	for code, want := range map[codes.Code]int{
		codes.Unavailable: 4, codes.DeadlineExceeded: 4,
		codes.InvalidArgument: 3, codes.NotFound: 3, codes.Internal: 3, codes.Canceled: 3,
	} {
		if got := exitCode(code); got != want {
			t.Errorf("exitCode(%s) = %d, want %d", statusName(code), got, want)
		}
	}
}

func TestCheckAddressTakesHostColonPort(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:50051", "cp.internal:443", "[::1]:50051", "localhost:1"} {
		if err := checkAddress(ok); err != nil {
			t.Errorf("checkAddress(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{
		"not an address", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:0",
		"127.0.0.1:http", ":50051", "::1:50051", "not a host:50051", "http://cp:50051",
	} {
		if err := checkAddress(bad); err == nil {
			t.Errorf("checkAddress(%q) = nil, want an error", bad)
		}
	}
}

func TestCheckAddressLeavesGRPCTargetsToDial(t *testing.T) {
	// As the `modelplane` CLI's --server: a target with a scheme goes to grpc.Dial unchecked.
	for _, ok := range []string{
		"unix:///tmp/cp.sock", "unix:/tmp/cp.sock", "unix:cp.sock", "unix-abstract:cp",
		"dns:///127.0.0.1:50051", "dns:cp.internal:50051", "ipv4:127.0.0.1:50051",
		"ipv6:[::1]:50051", "passthrough:///127.0.0.1:50051", "vsock:3:50051",
	} {
		if err := checkAddress(ok); err != nil {
			t.Errorf("checkAddress(%q) = %v, want nil", ok, err)
		}
	}
	// A scheme is only one of those, spelled out at the start.
	for _, bad := range []string{"unixx:/tmp/cp.sock", "dnss:///cp:1", "tcp://cp:50051", " unix:/s"} {
		if err := checkAddress(bad); err == nil {
			t.Errorf("checkAddress(%q) = nil, want an error", bad)
		}
	}
}
