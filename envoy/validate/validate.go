// Package validate checks Envoy configuration that fronts tokenwarden: a complete bootstrap
// (envoy.yaml) or the Envoy protos embedded in Istio EnvoyFilter patches.
//
// Validation has three layers, each catching what the previous cannot:
//
//  1. Decoding: YAML → JSON (sigs.k8s.io/yaml) → protojson into the go-control-plane type.
//     Unknown fields, wrong types, lower-case enums and unregistered "@type" URLs fail here.
//     Envoy parses enums case-insensitively; protojson does not, so this layer is stricter than
//     Envoy and configs must spell enums in UPPER_CASE (Envoy's MessageUtil JSON loading turns
//     on case-insensitive enum parsing: https://github.com/envoyproxy/envoy/blob/main/source/common/protobuf/utility.cc).
//  2. Deep PGV validation: ValidateAll on the root and, recursively, on every message packed in a
//     google.protobuf.Any. The generated ValidateAll stops at Any fields, so without this walk a
//     message_timeout of 7200s inside the HCM's typed_config passes (the generated validators
//     only call ValidateAll on embedded messages that implement it, and *anypb.Any does not; see
//     HttpFilter.validate in https://github.com/envoyproxy/go-control-plane/blob/main/envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.validate.go).
//  3. Cross-references and tokenwarden's needs: clusters that routes and ext_proc name exist,
//     the processor cluster speaks HTTP/2, ext_proc sits before the router with the processing
//     mode, attributes, namespaces and timeouts the processor relies on.
//
// All problems found in layers 2 and 3 are reported together (errors.Join), each prefixed with
// the path of the offending field.
package validate

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/tokenwarden/tokenwarden/extproc/contract"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
)

// Names tokenwarden and its Envoy configuration agree on.
const (
	// ExtProcFilter is the HTTP filter name (and typed_per_filter_config key) of ext_proc.
	ExtProcFilter = "envoy.filters.http.ext_proc"
	// RouterFilter is the terminal HTTP filter.
	RouterFilter = "envoy.filters.http.router"
	// HCMFilter is the network filter that hosts the HTTP filter chain.
	HCMFilter = "envoy.filters.network.http_connection_manager"
	// MetadataNamespace, PolicyAttribute and ModelHeader are the processor's own strings
	// (package contract): where route metadata selects a policy and the processor writes its
	// per-request dynamic metadata, the attribute it reads the route's policy from, and the header
	// routes may match the served model on.
	MetadataNamespace = contract.MetadataNamespace
	PolicyAttribute   = contract.PolicyAttribute
	ModelHeader       = contract.ModelHeader
)

// Summary describes a bootstrap that passed validation.
type Summary struct {
	Listeners int
	Clusters  int
	// Routes counts routes in inline route configurations (RDS is not followed).
	Routes int
	// ExtProcFilters counts ext_proc filters across all HTTP connection managers.
	ExtProcFilters int
	// Policies lists, sorted and distinct, the policy names selected by route metadata.
	Policies []string
	// Disabled lists the routes (by name, or by match when unnamed) that disable ext_proc.
	Disabled []string
}

// String renders the counts as "listeners N clusters N" (the form a known-good bootstrap is
// summarised in, "OK: listeners 1 clusters 2"), extended with routes, ext_proc filters and
// policies.
func (s Summary) String() string {
	return fmt.Sprintf("listeners %d clusters %d routes %d ext_proc %d policies [%s]",
		s.Listeners, s.Clusters, s.Routes, s.ExtProcFilters, strings.Join(s.Policies, " "))
}

// ValidateBootstrap decodes a YAML Envoy bootstrap and validates it through all three layers
// described in the package comment. The returned error lists every problem found.
func ValidateBootstrap(doc []byte) (Summary, error) {
	return validateBootstrap(doc, protoregistry.GlobalTypes)
}

// resolver is what protojson needs to resolve "@type" URLs; tests substitute one that lacks a
// type to reproduce a missing blank import.
type resolver interface {
	protoregistry.MessageTypeResolver
	protoregistry.ExtensionTypeResolver
}

func validateBootstrap(doc []byte, r resolver) (Summary, error) {
	var b bootstrapv3.Bootstrap
	if err := decode(doc, &b, r); err != nil {
		return Summary{}, err
	}
	if err := Deep(&b); err != nil {
		return Summary{}, err
	}
	return checkBootstrap(&b)
}

// Decode converts one YAML document to JSON and unmarshals it strictly (unknown fields are
// errors) into m. "@type" URLs resolve through protoregistry.GlobalTypes, populated by this
// package's blank imports (register.go).
func Decode(doc []byte, m proto.Message) error {
	return decode(doc, m, protoregistry.GlobalTypes)
}

func decode(doc []byte, m proto.Message, r resolver) error {
	name := m.ProtoReflect().Descriptor().FullName()
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return fmt.Errorf("decode %s: yaml: %w", name, err)
	}
	if err := (protojson.UnmarshalOptions{Resolver: r}).Unmarshal(j, m); err != nil {
		if strings.Contains(err.Error(), "invalid value for enum") {
			return fmt.Errorf("decode %s: %w (write enums in UPPER_CASE: Envoy accepts any case, protojson does not)", name, err)
		}
		return fmt.Errorf("decode %s: %w", name, err)
	}
	return nil
}

// Deep runs ValidateAll on m and on every message packed in an Any anywhere beneath it,
// recursively. Errors carry the field path, with the packed type in angle brackets, e.g.
// "static_resources.listeners[0]…typed_config<HttpConnectionManager>.http_filters[0].typed_config<ExternalProcessor>".
func Deep(m proto.Message) error {
	var errs []error
	walk(m.ProtoReflect(), "", true, &errs)
	return errors.Join(errs...)
}

// DeepPartial is Deep without validating m itself: for patches (Istio MERGE) whose root is
// deliberately incomplete, e.g. a Route carrying only metadata, whose required `match` is absent.
// Messages packed in Anys beneath it are still validated in full.
func DeepPartial(m proto.Message) error {
	var errs []error
	walk(m.ProtoReflect(), "", false, &errs)
	return errors.Join(errs...)
}

type allValidator interface{ ValidateAll() error }

// walk validates m if it is a validation root (the top or an Any's content) — ValidateAll
// already covers its non-Any descendants — then descends to find the Anys.
func walk(m protoreflect.Message, path string, root bool, errs *[]error) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			*errs = append(*errs, fmt.Errorf("%s: %w", orRoot(path), err))
			return
		}
		walk(inner.ProtoReflect(), fmt.Sprintf("%s<%s>", path, inner.ProtoReflect().Descriptor().Name()), true, errs)
		return
	}
	if root {
		if v, ok := m.Interface().(allValidator); ok {
			if err := v.ValidateAll(); err != nil {
				*errs = append(*errs, fmt.Errorf("%s: %w", orRoot(path), err))
			}
		}
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := string(fd.Name())
		if path != "" {
			name = path + "." + name
		}
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				walk(mv.Message(), fmt.Sprintf("%s[%q]", name, k.String()), false, errs)
				return true
			})
		case fd.Message() == nil:
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walk(l.Get(i).Message(), fmt.Sprintf("%s[%d]", name, i), false, errs)
			}
		default:
			walk(v.Message(), name, false, errs)
		}
		return true
	})
}

func orRoot(path string) string {
	if path == "" {
		return "(root)"
	}
	return path
}
