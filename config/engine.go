package config

// frameEngine rejects what engine frame cannot honour yet, so a config never
// silently loses a feature by switching engines. Nothing is left to reject
// today: route retry (the frame engine keeps a copy of the request DATA for
// replay while a retry is possible) and idle_timeout, cluster tls, and
// original_dst listeners (transparent interception, routed by original
// destination) work on both engines. The hook stays for the next
// engine-specific setting.
func (*validator) frameEngine() {}
