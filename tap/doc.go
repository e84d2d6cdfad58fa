// Package tap streams finished calls to whoever watches them live: the
// admin port's GET /tap (package admin) and `meshd tap` (cmd/meshd).
//
// A Hub is a callrecord.Observer installed on every meshd (server.New adds
// it), so a tap needs no restart and no config. While nobody taps, its
// ObserveCall is one atomic pointer load and a nil check (BenchmarkObserveCall
// measures it against a Hub with one tapper). Each Subscription has its own
// filter (route, method, code), rate cap and bounded buffer: the data path
// never waits for a tapper; a slow one loses calls, and they are counted.
//
// Where the parts live: the Hub and the Event it sends are here; the HTTP
// stream is admin/tap.go; the table printer is cmd/meshd/tap.go; the Hub is
// wired in server/server.go.
package tap
