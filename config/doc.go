// Package config is meshd's configuration schema: the YAML file's types, their
// defaults, strict decoding and validation.
//
// It is a leaf package (it imports nothing else of meshd's) so that the
// `meshd validate` command, the hot-reload path and every component see one
// schema and one kind of error. Decoding is strict: an unknown key, a value of
// the wrong type, a bad duration or status-code name, a route pointing at a
// missing cluster or a duplicate name is an error that names the file, the
// line and the field. Decode and Validate report every problem they find, not
// only the first, so an operator fixes a file in one pass.
//
// Field comments on the types below are the user documentation of each key;
// the README's config reference is written from them.
package config
