// Package accesslog writes one structured JSON line per finished call
// through meshd (never one per message), with log/slog's JSON handler:
//
//	{"time":"2025-01-02T15:04:05.123456789Z","msg":"access","method":"/users.v1.Users/GetUser",
//	 "route":"users-get","cluster":"users","endpoint":"10.0.0.7:9001","code":"OK",
//	 "duration_ms":0.912,"bytes_in":18,"bytes_out":240,"attempts":1,
//	 "trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","peer":"127.0.0.1:51234"}
//
// "error" is added when meshd itself produced the status (no route, no
// healthy endpoint...). Empty strings mean "none": no route matched, no
// endpoint was tried, the call was not traced.
//
// A Logger is a callrecord.Observer. Formatting happens on the call's goroutine;
// writing does not: lines go through a bounded queue to a writer goroutine,
// so a slow disk or a blocked pipe never slows calls down. When the queue
// is full, lines are dropped and counted (Dropped). Sampling keeps a fixed
// share of calls. When the access log is off, meshd does not install a
// Logger at all, so it costs nothing.
package accesslog
