package main

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"
)

func etcdCommand() *cli.Command {
	return &cli.Command{
		Name:  "etcd",
		Usage: "etcd maintenance",
		Subcommands: []*cli.Command{{
			Name:  "recover-space",
			Usage: "end a NOSPACE alarm: compact etcd's history, defragment every member, disarm the alarm",
			Description: `When etcd's database reaches its quota (--quota-backend-bytes) etcd raises
its NOSPACE alarm and refuses every change: no address can be allocated or
released. This compacts the history up to the current revision, defragments
every member in turn (each member blocks its reads and writes meanwhile),
and disarms the NOSPACE alarms, as etcd's maintenance guide does with
etcdctl. It frees history only: when live keys fill the quota, etcd raises
the alarm again at the next write, and the quota must grow. CORRUPT alarms
are left alone. With etcd auth it needs etcd's root user. Each daemon then
applies the releases it kept meanwhile, within 30s.`,
			ArgsUsage: " ",
			Flags: []cli.Flag{&cli.DurationFlag{Name: "defrag-timeout", Value: 5 * time.Minute,
				Usage: "bound on the whole recovery, added to --timeout: defragmenting a large database takes minutes"}},
			Action: recoverSpace,
		}},
	}
}

func recoverSpace(c *cli.Context) error {
	if _, err := positional(c, 0, 0); err != nil {
		return err
	}
	return withEtcd(c, c.Duration("defrag-timeout"), func(ctx context.Context, e *env) error {
		r, err := e.store.RecoverSpace(ctx)
		if r.Revision > 0 {
			fmt.Fprintf(c.App.Writer, "compacted etcd's history up to revision %d\n", r.Revision)
		}
		for _, m := range r.Members {
			fmt.Fprintf(c.App.Writer, "defragmented %s: %.1f MB -> %.1f MB\n", m.Endpoint, float64(m.Before)/1e6, float64(m.After)/1e6)
		}
		for _, a := range r.Disarmed {
			fmt.Fprintf(c.App.Writer, "disarmed %s\n", a)
		}
		if err == nil && len(r.Disarmed) == 0 {
			fmt.Fprintln(c.App.Writer, "no NOSPACE alarm was raised")
		}
		return err
	})
}
