package client

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	modelplanev1 "github.com/modelplane/modelplane/clients/go/modelplane/v1"
)

// TestDialRefusesIdentityMetadataThatGRPCCannotCarry: grpc-go 1.33 sends any value as it
// is, so a principal with an accent reached the server as another name and one with a line
// break broke the call; Dial refuses them as the Python SDK does (INVALID_METADATA).
func TestDialRefusesIdentityMetadataThatGRPCCannotCarry(t *testing.T) {
	for _, tc := range []struct {
		opts  Options
		field string
		shown string
	}{
		{Options{Principal: "josé"}, "principal", `principal "josé" holds 'é'`},
		{Options{Principal: "a\r\nb"}, "principal", `principal "a\r\nb" holds '\r'`},
		{Options{Principal: "tab\there"}, "principal", `principal "tab\there" holds '\t'`},
		{Options{Roles: []string{"risk", "prüfer"}}, "roles", `roles "risk,prüfer" holds 'ü'`},
		{Options{Token: "s3crét-token-0123456789"}, "token", "token holds a character"},
		{Options{Token: "s3cret-token\r\n0123456789"}, "token", "token holds a character"},
	} {
		c, err := Dial("127.0.0.1:50051", tc.opts)
		if err == nil {
			c.Close()
			t.Errorf("Dial(%+v): no error", tc.opts)
			continue
		}
		var me *MetadataError
		if !errors.As(err, &me) || me.Field != tc.field {
			t.Errorf("Dial(%+v) = %v, want a MetadataError for %s", tc.opts, err, tc.field)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.shown) || !strings.Contains(msg, "printable ASCII only") {
			t.Errorf("Dial(%+v): error %q does not say %q and what to give", tc.opts, msg, tc.shown)
		}
		if strings.Contains(msg, "s3cr") {
			t.Errorf("Dial(%+v): error %q shows the token", tc.opts, msg)
		}
		if status.Code(err) != codes.InvalidArgument || Reason(err) != "INVALID_METADATA" {
			t.Errorf("Dial(%+v): %v %q, want InvalidArgument INVALID_METADATA",
				tc.opts, status.Code(err), Reason(err))
		}
		if got := ErrorInfo(err).GetMetadata()["field"]; got != tc.field {
			t.Errorf("Dial(%+v): ErrorInfo field %q, want %q", tc.opts, got, tc.field)
		}
	}
}

// recordingRegistry answers GetModel NotFound and keeps the metadata each call came with.
type recordingRegistry struct {
	modelplanev1.UnimplementedRegistryServiceServer
	seen chan metadata.MD
}

func (r *recordingRegistry) GetModel(
	ctx context.Context, _ *modelplanev1.GetModelRequest,
) (*modelplanev1.Model, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	r.seen <- md
	return nil, status.Error(codes.NotFound, "no models here")
}

// sentMetadata is the metadata a GetModel from a client dialled with opts arrives with.
func sentMetadata(t *testing.T, opts Options) metadata.MD {
	t.Helper()
	registry := &recordingRegistry{seen: make(chan metadata.MD, 1)}
	c := dialInProcess(t, opts, func(server *grpc.Server) {
		modelplanev1.RegisterRegistryServiceServer(server, registry)
	})
	_, err := c.Registry.GetModel(context.Background(), &modelplanev1.GetModelRequest{Name: "models/x"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("GetModel: %v, want NotFound", err)
	}
	return <-registry.seen
}

func TestIdentityIsSentAsGivenTheTokenWithoutSpacesAround(t *testing.T) {
	md := sentMetadata(t, Options{
		Principal: "ci.bot_1@corp:x+y-z",
		Roles:     []string{" risk", "", "ml-lead "},
		Token:     " tok-0123456789abcdef\n",
	})
	for key, want := range map[string]string{
		PrincipalKey:    "ci.bot_1@corp:x+y-z",
		RolesKey:        "risk,ml-lead",
		"authorization": "Bearer tok-0123456789abcdef",
	} {
		if got := md.Get(key); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
}

func TestNoIdentityIsSentWhenNoneIsGiven(t *testing.T) {
	md := sentMetadata(t, Options{Roles: []string{" "}, Token: " "})
	for _, key := range []string{PrincipalKey, RolesKey, "authorization"} {
		if got := md.Get(key); len(got) != 0 {
			t.Errorf("%s = %q, want none", key, got)
		}
	}
}
