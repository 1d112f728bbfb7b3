package client

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
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
