// Package callrecord is the record of one finished call, and the interface
// of those who read it: metrics, the access log and tap. It sits between
// the data path and its sinks so that neither imports the other: the
// director fills a Call when the engine reports a call's end and hands it
// to each Observer; the sinks import only this package.
package callrecord
