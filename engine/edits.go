package engine

import "golang.org/x/net/http2/hpack"

// HeaderEdits are a route's header rules in the engine's form: what to
// remove, replace and append in the request HEADERS sent upstream and in
// the response HEADERS forwarded to the client. A value is immutable and
// shared by every call of its route; a route without rules has none
// (Target.Edits nil), which costs its calls one nil check.
//
// Names are lowercase and never pseudo headers, grpc-*, te, content-type
// or hop-by-hop names (the config refuses them): the edits cannot change
// how a call is framed or what its status is.
type HeaderEdits struct {
	// RequestRemove names the client's fields that are not sent upstream.
	RequestRemove []string
	// RequestSet replaces every client field of the same name (or adds
	// the field when the client sent none).
	RequestSet []hpack.HeaderField
	// RequestAdd appends fields, keeping the client's of the same name.
	RequestAdd []hpack.HeaderField
	// ResponseRemove names the backend's response header fields that are
	// not forwarded. Response edits apply to the response's first HEADERS
	// (its headers, or a trailers-only response), not to trailers.
	ResponseRemove []string
	// ResponseSet replaces every response header field of the same name.
	ResponseSet []hpack.HeaderField
	// ResponseAdd appends response header fields.
	ResponseAdd []hpack.HeaderField
}

// HasResponse reports whether e edits responses.
func (e *HeaderEdits) HasResponse() bool {
	return e != nil && len(e.ResponseRemove)+len(e.ResponseSet)+len(e.ResponseAdd) > 0
}

// dropped reports whether a field named name gives way to the edits:
// removed, or replaced by a set.
func dropped(name string, remove []string, set []hpack.HeaderField) bool {
	for _, r := range remove {
		if r == name {
			return true
		}
	}
	return replaced(name, set)
}

// editResponse copies the response header fields to forward to the
// client: filterResponse's copy, with e's response edits applied (e may
// be nil).
func editResponse(fields []hpack.HeaderField, e *HeaderEdits) []hpack.HeaderField {
	if !e.HasResponse() {
		return filterResponse(fields)
	}
	out := make([]hpack.HeaderField, 0, len(fields)+len(e.ResponseSet)+len(e.ResponseAdd))
	for _, f := range fields {
		if isHopByHop(f.Name) || f.Name == "te" || dropped(f.Name, e.ResponseRemove, e.ResponseSet) {
			continue
		}
		out = append(out, f)
	}
	out = append(out, e.ResponseSet...)
	return append(out, e.ResponseAdd...)
}
