package client

import (
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the ErrorInfo domain the Modelplane servers put on their errors.
const ErrorDomain = "modelplane.dev"

// ErrorInfo returns the google.rpc.ErrorInfo a Modelplane server attached to err, or nil.
// Its Reason is an UPPER_SNAKE word such as MODEL_NOT_FOUND; status.Code(err) gives the code.
func ErrorInfo(err error) *errdetails.ErrorInfo {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info
		}
	}
	return nil
}

// Reason is the ErrorInfo reason of err, or "" when there is none.
func Reason(err error) string {
	return ErrorInfo(err).GetReason()
}

// RequestError is the error of a mutation (CreateModel, RegisterVersion, EvaluateGate) with
// the request id it was sent with: the call sent again with that id and the same arguments
// answers what this one did if the server applied it, as the Python SDK's
// metadata["request_id"] allows.
type RequestError struct {
	RequestID string
	Err       error
}

func (e *RequestError) Error() string { return e.Err.Error() }

func (e *RequestError) Unwrap() error { return e.Err }

// GRPCStatus is the status of the wrapped error: grpc-go's status.FromError and status.Code
// (and so ErrorInfo and Reason) look for this method on the error itself, not on what it wraps.
func (e *RequestError) GRPCStatus() *status.Status { return status.Convert(e.Err) }

// RequestIDOf is the request id a failed mutation was sent with, or "" when err carries none.
func RequestIDOf(err error) string {
	var re *RequestError
	if errors.As(err, &re) {
		return re.RequestID
	}
	return ""
}

func withRequestID(err error, id string) error {
	return &RequestError{RequestID: id, Err: err}
}

// MetadataError is Dial's error for an Options value that gRPC metadata cannot carry: it
// carries printable ASCII only (no accents, no control characters or line breaks). Its status
// is InvalidArgument with the ErrorInfo reason INVALID_METADATA and metadata field, as the
// Python SDK and the Node client refuse such a value.
type MetadataError struct {
	// Field is the option: "principal", "roles" or "token".
	Field string
	// Char is the first character metadata cannot carry.
	Char rune
	// value is shown in the message unless it is a secret (the token).
	value  string
	secret bool
}

func (e *MetadataError) Error() string {
	held := fmt.Sprintf("%s holds a character", e.Field)
	if !e.secret {
		held = fmt.Sprintf("%s %q holds %q", e.Field, e.value, e.Char)
	}
	return "client: " + held + " that gRPC metadata cannot carry: printable ASCII only " +
		"(no accents, no control characters or line breaks)"
}

// GRPCStatus is InvalidArgument with an ErrorInfo (reason INVALID_METADATA, metadata field),
// so that status.Code, ErrorInfo and Reason read it as they read a server's refusal.
func (e *MetadataError) GRPCStatus() *status.Status {
	st := status.New(codes.InvalidArgument, e.Error())
	info := &errdetails.ErrorInfo{
		Reason: "INVALID_METADATA", Domain: ErrorDomain, Metadata: map[string]string{"field": e.Field},
	}
	if detailed, err := st.WithDetails(info); err == nil {
		return detailed
	}
	return st
}

// checkMetadata returns a *MetadataError when value holds a character gRPC metadata cannot
// carry; a secret value is not shown in it.
func checkMetadata(value, field string, secret bool) error {
	for _, ch := range value {
		if ch < ' ' || ch > '~' {
			return &MetadataError{Field: field, Char: ch, value: value, secret: secret}
		}
	}
	return nil
}
