// Package client is a small typed client for the Modelplane control plane: the generated
// service clients of modelplane.v1 over one gRPC connection, with the caller's identity sent
// on every call, and helpers for the steps a CI job takes (upload, register, gate).
package client

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	modelplanev1 "github.com/modelplane/modelplane/clients/go/modelplane/v1"
)

// Metadata keys a server without access control reads the caller from.
const (
	PrincipalKey = "x-modelplane-principal"
	RolesKey     = "x-modelplane-roles"
)

// ChunkBytes is the size of each UploadBlob chunk message.
const ChunkBytes = 1 << 20

// DefaultTimeout bounds each call whose context has no deadline when Options.Timeout is 0.
const DefaultTimeout = 60 * time.Second

// NoTimeout as Options.Timeout puts no deadline on calls whose context has none: they end
// with their context only.
const NoTimeout time.Duration = -1

// MaxMessageBytes bounds the messages a Client or Sidecar sends and receives, as in the Python
// SDK and the servers: grpc-go's default 4 MiB receive limit would refuse a large answer (a
// version with much lineage, an ExportAuditEvents message of 500 large events, a ModelInfer
// answer of a few thousand rows) with RESOURCE_EXHAUSTED.
const MaxMessageBytes = math.MaxInt32

// Options say how to present yourself to a control plane. Principal, Roles and Token travel
// as gRPC metadata, which carries printable ASCII only: Dial refuses anything else with a
// *MetadataError.
type Options struct {
	// Principal is named to a server without access control: 1-128 ASCII letters, digits and
	// ._@:+-, or the server refuses each call (InvalidArgument).
	Principal string
	// Roles are claimed for approvals from a server without access control.
	Roles []string
	// Token is a bearer token (or JWT) for a server with access control; spaces around it
	// are dropped.
	Token string
	// Timeout bounds each call whose context has no deadline: unary calls and UploadBlob.
	// 0 is DefaultTimeout (60 s), NoTimeout is none; any other negative value is refused by
	// Dial. Server streams (DownloadBlob, ExportAuditEvents, WatchDeployment) are not bounded
	// by it; they end with their context.
	Timeout time.Duration
	// DialOptions replace the default transport (plaintext); pass TLS credentials here. They
	// apply after the MaxMessageBytes limits, so a grpc.WithDefaultCallOptions here may
	// lower them.
	DialOptions []grpc.DialOption
}

// Client holds one connection to a control plane and a client per service.
type Client struct {
	conn *grpc.ClientConn

	Registry    modelplanev1.RegistryServiceClient
	Blobs       modelplanev1.BlobServiceClient
	Evaluation  modelplanev1.EvaluationServiceClient
	Governance  modelplanev1.GovernanceServiceClient
	Operations  modelplanev1.OperationsServiceClient
	Deployments modelplanev1.DeploymentServiceClient
	Audit       modelplanev1.AuditServiceClient
}

// Dial connects to the control plane at address (HOST:PORT). The connection is made lazily:
// an unreachable server shows up as UNAVAILABLE on the first call. A negative
// Options.Timeout other than NoTimeout is refused: every call would expire at once. So is a
// Principal, Roles or Token that gRPC metadata cannot carry (a *MetadataError), which
// grpc-go would otherwise send as it is, for the server to read as another name or not at
// all.
func Dial(address string, opts Options) (*Client, error) {
	conn, err := dial(address, opts)
	if err != nil {
		return nil, err
	}
	return &Client{
		conn:        conn,
		Registry:    modelplanev1.NewRegistryServiceClient(conn),
		Blobs:       modelplanev1.NewBlobServiceClient(conn),
		Evaluation:  modelplanev1.NewEvaluationServiceClient(conn),
		Governance:  modelplanev1.NewGovernanceServiceClient(conn),
		Operations:  modelplanev1.NewOperationsServiceClient(conn),
		Deployments: modelplanev1.NewDeploymentServiceClient(conn),
		Audit:       modelplanev1.NewAuditServiceClient(conn),
	}, nil
}

// dial opens the connection Dial and DialSidecar share: MaxMessageBytes limits, plaintext
// unless opts.DialOptions say otherwise, and the identity and timeout on every call.
func dial(address string, opts Options) (*grpc.ClientConn, error) {
	timeout := opts.Timeout
	switch {
	case timeout == 0:
		timeout = DefaultTimeout
	case timeout == NoTimeout:
		timeout = 0 // no deadline added
	case timeout < 0:
		return nil, fmt.Errorf(
			"client: Options.Timeout %v is negative: give a positive duration, 0 for %v, "+
				"or NoTimeout for none", timeout, DefaultTimeout)
	}
	pairs, err := identityPairs(opts)
	if err != nil {
		return nil, err
	}
	options := []grpc.DialOption{grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes),
	)}
	if len(opts.DialOptions) == 0 {
		options = append(options, grpc.WithInsecure())
	} else {
		options = append(options, opts.DialOptions...)
	}
	options = append(options,
		grpc.WithChainUnaryInterceptor(unaryIdentity(pairs, timeout)),
		grpc.WithChainStreamInterceptor(streamIdentity(pairs, timeout)),
	)
	return grpc.Dial(address, options...)
}

// identityPairs are the metadata pairs naming the caller, each value checked.
func identityPairs(opts Options) ([]string, error) {
	pairs := []string{}
	if opts.Principal != "" {
		if err := checkMetadata(opts.Principal, "principal", false); err != nil {
			return nil, err
		}
		pairs = append(pairs, PrincipalKey, opts.Principal)
	}
	roles := []string{}
	for _, r := range opts.Roles {
		if r = strings.TrimSpace(r); r != "" {
			roles = append(roles, r)
		}
	}
	if len(roles) > 0 {
		joined := strings.Join(roles, ",")
		if err := checkMetadata(joined, "roles", false); err != nil {
			return nil, err
		}
		pairs = append(pairs, RolesKey, joined)
	}
	if token := strings.TrimSpace(opts.Token); token != "" {
		if err := checkMetadata(token, "token", true); err != nil {
			return nil, err
		}
		pairs = append(pairs, "authorization", "Bearer "+token)
	}
	return pairs, nil
}

// Close closes the connection.
func (c *Client) Close() error {
	return c.conn.Close()
}

// UploadBlob uploads data; the server checks the sha256 computed here.
func (c *Client) UploadBlob(ctx context.Context, data []byte, mediaType string) (*modelplanev1.Blob, error) {
	sum := sha256.Sum256(data)
	stream, err := c.Blobs.UploadBlob(ctx)
	if err != nil {
		return nil, err
	}
	header := &modelplanev1.UploadBlobHeader{
		Sha256:    hex.EncodeToString(sum[:]),
		SizeBytes: int64(len(data)),
		MediaType: mediaType,
	}
	// The header rides with the first chunk; a blob up to ChunkBytes is one message.
	for i := 0; err == nil && (i == 0 || i < len(data)); i += ChunkBytes {
		end := i + ChunkBytes
		if end > len(data) {
			end = len(data)
		}
		message := &modelplanev1.UploadBlobRequest{Chunk: data[i:end]}
		if i == 0 {
			message.Header = header
		}
		err = stream.Send(message)
	}
	// A send fails with io.EOF when the server has answered early; the answer comes from here.
	return stream.CloseAndRecv()
}

// CallOption changes one call of CreateModel or EvaluateGate.
type CallOption func(*callOptions)

type callOptions struct {
	requestID string
}

// WithRequestID sends id as the call's request id instead of a new one. A call whose answer
// was lost (DEADLINE_EXCEEDED, UNAVAILABLE) may have been applied: sent again with the same
// arguments and the id of its error (RequestIDOf), it answers what the first call did
// instead of applying it twice. An empty id is ignored.
func WithRequestID(id string) CallOption {
	return func(o *callOptions) {
		if id != "" {
			o.requestID = id
		}
	}
}

// requestID is the id WithRequestID set among opts, or a new one.
func requestID(opts []CallOption) string {
	o := callOptions{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.requestID == "" {
		return RequestID()
	}
	return o.requestID
}

// CreateModel creates models/{modelID}. Its error carries the request id (RequestIDOf).
func (c *Client) CreateModel(
	ctx context.Context, modelID, description string, opts ...CallOption,
) (*modelplanev1.Model, error) {
	id := requestID(opts)
	model, err := c.Registry.CreateModel(ctx, &modelplanev1.CreateModelRequest{
		ModelId:   modelID,
		Model:     &modelplanev1.Model{Description: description},
		RequestId: id,
	})
	if err != nil {
		return nil, withRequestID(err, id)
	}
	return model, nil
}

// RegisterVersion uploads the ONNX bytes, then registers them as the model's next version.
// Fields set in template (lineage, labels, ...) are sent as they are; Parent and
// ArtifactSha256 are filled in, and RequestId when empty. They are set on a copy: template is
// not modified, so one template serves several models or a retry with another artifact.
// When CreateModelVersion fails, the error carries the request id sent (RequestIDOf).
func (c *Client) RegisterVersion(
	ctx context.Context, model string, onnx []byte, template *modelplanev1.CreateModelVersionRequest,
) (*modelplanev1.ModelVersion, error) {
	blob, err := c.UploadBlob(ctx, onnx, "application/onnx")
	if err != nil {
		return nil, err
	}
	req := &modelplanev1.CreateModelVersionRequest{}
	if template != nil {
		req = proto.Clone(template).(*modelplanev1.CreateModelVersionRequest)
	}
	req.Parent = ModelName(model)
	req.ArtifactSha256 = blob.GetSha256()
	if req.RequestId == "" {
		req.RequestId = RequestID()
	}
	version, err := c.Registry.CreateModelVersion(ctx, req)
	if err != nil {
		return nil, withRequestID(err, req.RequestId)
	}
	return version, nil
}

// EvaluateGate evaluates the policy bound to target (an alias or deployments/NAME) for a
// version; the decision is recorded on the server. Its error carries the request id
// (RequestIDOf): retried with WithRequestID, a call that was applied answers the decision it
// recorded instead of recording another.
func (c *Client) EvaluateGate(
	ctx context.Context, model string, version int64, target string, opts ...CallOption,
) (*modelplanev1.GateDecision, error) {
	id := requestID(opts)
	decision, err := c.Governance.EvaluateGate(ctx, &modelplanev1.EvaluateGateRequest{
		Name:      VersionName(model, version),
		Target:    target,
		RequestId: id,
	})
	if err != nil {
		return nil, withRequestID(err, id)
	}
	return decision, nil
}

// ModelName is models/{model}; a full name (models/fraud) passes through, as in the Python
// and Node clients.
func ModelName(model string) string {
	if strings.HasPrefix(model, "models/") {
		return model
	}
	return "models/" + model
}

// VersionName is models/{model}/versions/{version}; model may be a full name.
func VersionName(model string, version int64) string {
	return fmt.Sprintf("%s/versions/%d", ModelName(model), version)
}

// RequestID is a random UUID (version 4) making a mutation idempotent.
func RequestID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// unaryIdentity sends the identity on every unary call, and bounds one whose context has no
// deadline by timeout (0: none).
func unaryIdentity(pairs []string, timeout time.Duration) grpc.UnaryClientInterceptor {
	return func(
		ctx context.Context, method string, req, reply interface{},
		cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption,
	) error {
		if _, ok := ctx.Deadline(); !ok && timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		if len(pairs) > 0 {
			ctx = metadata.AppendToOutgoingContext(ctx, pairs...)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// streamIdentity sends the identity on every stream, and bounds a client stream with one
// answer (UploadBlob) by timeout (0: none) when its context has no deadline. Server streams
// are left unbounded: a download or a watch may rightly run longer.
func streamIdentity(pairs []string, timeout time.Duration) grpc.StreamClientInterceptor {
	return func(
		ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn,
		method string, streamer grpc.Streamer, opts ...grpc.CallOption,
	) (grpc.ClientStream, error) {
		if len(pairs) > 0 {
			ctx = metadata.AppendToOutgoingContext(ctx, pairs...)
		}
		if _, ok := ctx.Deadline(); ok || desc.ServerStreams || timeout == 0 {
			return streamer(ctx, desc, cc, method, opts...)
		}
		ctx, cancel := context.WithTimeout(ctx, timeout)
		stream, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			cancel()
			return nil, err
		}
		return &boundedStream{ClientStream: stream, cancel: cancel}, nil
	}
}

// boundedStream releases its timeout once the single answer (or the call's error) is read.
// A stream abandoned before that is released when the timeout passes.
type boundedStream struct {
	grpc.ClientStream
	cancel context.CancelFunc
}

func (s *boundedStream) RecvMsg(m interface{}) error {
	err := s.ClientStream.RecvMsg(m)
	s.cancel()
	return err
}
