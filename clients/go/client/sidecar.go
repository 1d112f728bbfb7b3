package client

import (
	"google.golang.org/grpc"

	modelplanev1 "github.com/modelplane/modelplane/clients/go/modelplane/v1"
	"github.com/modelplane/modelplane/clients/go/oip"
)

// Sidecar holds one connection to an inference sidecar and a client per service it serves:
// the Open Inference Protocol (ModelInfer, ModelMetadata, readiness) and its administration
// (drift reports, ground-truth labels).
type Sidecar struct {
	conn *grpc.ClientConn

	Inference oip.GRPCInferenceServiceClient
	Admin     modelplanev1.SidecarAdminServiceClient
}

// DialSidecar connects to the inference sidecar at address (HOST:PORT, or a gRPC target as
// Dial takes) as Dial connects to a control plane: messages up to MaxMessageBytes each way
// (grpc-go's default 4 MiB receive limit would refuse the answer to a request of a few
// thousand rows), plaintext unless Options.DialOptions give TLS credentials, and
// Options.Timeout bounding each call whose context has no deadline. The sidecar itself reads
// no identity; Principal, Roles and Token are sent all the same, for a proxy in front of it.
// The connection is made lazily: an unreachable sidecar shows up as UNAVAILABLE on the first
// call.
func DialSidecar(address string, opts Options) (*Sidecar, error) {
	conn, err := dial(address, opts)
	if err != nil {
		return nil, err
	}
	return &Sidecar{
		conn:      conn,
		Inference: oip.NewGRPCInferenceServiceClient(conn),
		Admin:     modelplanev1.NewSidecarAdminServiceClient(conn),
	}, nil
}

// Close closes the connection.
func (s *Sidecar) Close() error {
	return s.conn.Close()
}
