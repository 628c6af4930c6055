package main

import (
	"context"
	"log/slog"
	"slices"
	"sort"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcdLog hands the embedded etcd's zap log to the daemon's slog logger,
// so that both print one format, from warnings up (etcd's info lines are
// its routine). Once the daemon stops etcd, the errors etcd logs about its
// own listeners closing are part of a clean stop: they go out at debug
// level, and no stack traces ever do.
type etcdLog struct {
	log      *slog.Logger
	attrs    []slog.Attr
	stopping *atomic.Bool
}

func newEtcdLog(log *slog.Logger) (*zap.Logger, *atomic.Bool) {
	stopping := &atomic.Bool{}
	return zap.New(&etcdLog{log: log.With("component", "etcd"), stopping: stopping}), stopping
}

func (c *etcdLog) level(l zapcore.Level) slog.Level {
	switch {
	case c.stopping.Load():
		return slog.LevelDebug
	case l >= zapcore.ErrorLevel:
		return slog.LevelError
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	}
	return slog.LevelDebug
}

func (c *etcdLog) Enabled(l zapcore.Level) bool {
	return l >= zapcore.WarnLevel && c.log.Enabled(context.Background(), c.level(l))
}

func (c *etcdLog) With(fields []zapcore.Field) zapcore.Core {
	next := *c
	next.attrs = append(slices.Clone(c.attrs), attrs(fields)...)
	return &next
}

func (c *etcdLog) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *etcdLog) Write(e zapcore.Entry, fields []zapcore.Field) error {
	level := c.level(e.Level)
	if !c.log.Enabled(context.Background(), level) {
		return nil
	}
	r := slog.NewRecord(e.Time, level, e.Message, 0)
	r.AddAttrs(c.attrs...)
	r.AddAttrs(attrs(fields)...)
	return c.log.Handler().Handle(context.Background(), r)
}

func (c *etcdLog) Sync() error { return nil }

// attrs renders zap fields as slog attributes, in name order.
func attrs(fields []zapcore.Field) []slog.Attr {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	out := make([]slog.Attr, 0, len(enc.Fields))
	for k, v := range enc.Fields {
		out = append(out, slog.Any(k, v))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}
