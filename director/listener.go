package director

import "context"

type listenerKey struct{}

// WithListener returns ctx naming the listener a connection arrived on. The
// server puts it in every connection's context (engine.Config.ConnContext),
// so that routes limited to listeners (router.Table.ForListener) see it.
func WithListener(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, listenerKey{}, name)
}

// ListenerFrom returns the listener a call's connection arrived on, or ""
// when its context names none: such a call sees only the routes open to
// every listener.
func ListenerFrom(ctx context.Context) string {
	s, _ := ctx.Value(listenerKey{}).(string)
	return s
}
