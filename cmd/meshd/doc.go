// Command meshd is a transparent gRPC proxy: it routes every call by its full
// method name to a cluster of backends, balances per call over the healthy
// ones, and forwards the call unchanged.
//
//	meshd run -config FILE        serve until SIGTERM/SIGINT (drain, exit 0); SIGHUP or a file change reloads
//	                              listeners and the admin port bind with SO_REUSEPORT, so a new meshd can
//	                              take over before the old one is stopped; -reuse-port=false binds exclusively
//	meshd validate -config FILE   check a config: a one-line summary, or every error with file:line
//	meshd version                 print the version
//	meshd route explain -config FILE /pkg.Svc/Method [-H k=v ...] [-admin ADDR]
//	meshd tap -admin ADDR [-route R] [-method M] [-code C] [-limit N]
//	                              print the calls a running meshd finishes, live, as a table
package main
