package main

import (
	"errors"
	"fmt"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/bridgesetup"
)

// bridgeCommand puts the NIC into br0 and takes it out. It talks to the
// kernel only, never to etcd, so it works before the daemon is installed.
func bridgeCommand() *cli.Command {
	nicFlags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "nic", EnvVars: []string{"IPAM_BRIDGE_NIC"},
				Usage: "the physical NIC on the containers' L2 segment, e.g. eth0"},
			&cli.StringFlag{Name: "bridge", EnvVars: []string{"IPAM_BRIDGE"}, Value: bridgesetup.DefaultBridge,
				Usage: "the bridge"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the plan, one step a line, and change nothing"},
			jsonFlag(),
		}
	}
	return &cli.Command{
		Name:  "bridge",
		Usage: "put the NIC into a Linux bridge for containers on its L2 segment, or take it out (root; no etcd)",
		Subcommands: []*cli.Command{
			{
				Name:  "setup",
				Usage: "create the bridge with the NIC's MAC and MTU, move the NIC's addresses and routes onto it, enslave the NIC",
				Description: `Every step is undone, in reverse, when a later one fails: the NIC is then
configured as before. The steps take milliseconds and ignore a hangup, so
an SSH session through that NIC may run it. Run twice, the second run has
nothing to do. --persist also writes
the files that recreate the bridge at boot (under --persist-dir); with
--dry-run it names them and writes nothing.`,
				Flags: append(nicFlags(),
					&cli.StringFlag{Name: "persist", EnvVars: []string{"IPAM_BRIDGE_PERSIST"},
						Usage: "also write boot-time configuration: " + strings.Join(bridgesetup.PersistKinds(), ", ")},
					&cli.StringFlag{Name: "persist-dir", Value: "/", Usage: "root under which --persist writes /etc/…"},
				),
				Action: bridgeSetup,
			},
			{
				Name:  "teardown",
				Usage: "move the addresses and routes back to the NIC, release it and delete the bridge",
				Description: `A missing bridge counts as torn down. Refused while containers' interfaces
are still ports of the bridge. Files written by setup --persist stay: remove
them by hand, or the bridge comes back at the next boot.`,
				Flags:  nicFlags(),
				Action: bridgeTeardown,
			},
		},
	}
}

// bridgeJSON is the output of `bridge setup|teardown --json`.
type bridgeJSON struct {
	NIC    string `json:"nic"`
	Bridge string `json:"bridge"`
	stepsJSON
}

// stepsJSON is what `bridge` and `vlan` did, or would do.
type stepsJSON struct {
	DryRun bool             `json:"dryRun"`
	Steps  []bridgeStepJSON `json:"steps"` // done, or with dryRun the plan; empty: nothing to do
	Files  []bridgeFileJSON `json:"files,omitempty"`
}

type bridgeStepJSON struct {
	Name   string `json:"name"`   // createBridge, copyAddress, moveRoute…
	Detail string `json:"detail"` // "copy address 198.18.0.11/24 eth0 → br0"
}

type bridgeFileJSON struct {
	Path      string `json:"path"`
	Content   string `json:"content"`
	Written   bool   `json:"written"`          // false with dryRun, or when it already had this content
	Backup    string `json:"backup,omitempty"` // where the file it replaced was kept
	Unchanged bool   `json:"unchanged,omitempty"`
}

// bridgeConfig reads the flags common to both verbs.
func bridgeConfig(c *cli.Context) (bridgesetup.Config, error) {
	if _, err := positional(c, 0, 0); err != nil {
		return bridgesetup.Config{}, err
	}
	cfg := bridgesetup.Config{NIC: c.String("nic"), Bridge: c.String("bridge")}
	if cfg.NIC == "" {
		return cfg, errors.New("missing --nic: the physical NIC to bridge, e.g. --nic eth0")
	}
	return cfg, nil
}

func bridgeSetup(c *cli.Context) error {
	cfg, err := bridgeConfig(c)
	if err != nil {
		return err
	}
	kind, err := persistKind(c)
	if err != nil {
		return err
	}
	h, err := bridgesetup.New()
	if err != nil {
		return err
	}
	defer h.Close()

	out := bridgeJSON{NIC: cfg.NIC, Bridge: cfg.Bridge}
	if out.stepsJSON, err = runSteps(c, "bridge setup", func() ([]bridgesetup.Step, error) { return h.Plan(cfg) },
		func() ([]bridgesetup.Step, error) { return h.Setup(cfg) }); err != nil {
		return err
	}
	// From what is live now (the NIC's and the bridge's addresses and
	// routes together), so a dry run shows the files of the state after
	// setup.
	persistErr := persist(c, &out.stepsJSON, kind, func() ([]bridgesetup.File, error) {
		layout, err := h.Layout(cfg)
		if err != nil {
			return nil, err
		}
		return bridgesetup.Render(kind, layout)
	})
	if persistErr != nil && !out.DryRun {
		persistErr = fmt.Errorf("%s bridges %s, but it will not survive a reboot: %w", cfg.Bridge, cfg.NIC, persistErr)
	}
	note := fmt.Sprintf("check that nothing else configures %s at boot (e.g. /etc/network/interfaces, cloud-init, NetworkManager)", cfg.NIC)
	if err := printSteps(c, out, out.stepsJSON, "nothing to do: "+cfg.Bridge+" already bridges "+cfg.NIC, note); err != nil {
		return err
	}
	return persistErr
}

func bridgeTeardown(c *cli.Context) error {
	cfg, err := bridgeConfig(c)
	if err != nil {
		return err
	}
	h, err := bridgesetup.New()
	if err != nil {
		return err
	}
	defer h.Close()

	out := bridgeJSON{NIC: cfg.NIC, Bridge: cfg.Bridge}
	if out.stepsJSON, err = runSteps(c, "bridge teardown", func() ([]bridgesetup.Step, error) { return h.PlanTeardown(cfg) },
		func() ([]bridgesetup.Step, error) { return h.Teardown(cfg) }); err != nil {
		return err
	}
	return printSteps(c, out, out.stepsJSON, "nothing to do: no bridge "+cfg.Bridge, "")
}

// persistKind reads --persist.
func persistKind(c *cli.Context) (string, error) {
	kind := c.String("persist")
	if kind != "" && !slices.Contains(bridgesetup.PersistKinds(), kind) {
		return "", fmt.Errorf("invalid --persist %q: want one of %s", kind, strings.Join(bridgesetup.PersistKinds(), ", "))
	}
	return kind, nil
}

// runSteps plans (--dry-run) or applies one direction, ignoring SIGHUP
// while it changes the host, and returns what to print.
func runSteps(c *cli.Context, what string, plan, apply func() ([]bridgesetup.Step, error)) (stepsJSON, error) {
	out := stepsJSON{DryRun: c.Bool("dry-run")}
	run := apply
	if out.DryRun {
		run = plan
	} else {
		stopHangup := ignoreHangup()
		defer stopHangup()
	}
	steps, err := run()
	if err != nil {
		return out, fmt.Errorf("%s: %w", what, err)
	}
	out.Steps = bridgeStepsJSON(steps)
	return out, nil
}

// ignoreHangup keeps a dropped SSH session from killing ipamctl between
// two steps, where neither the rest of the plan nor the rollback would
// run, until the returned func is called.
func ignoreHangup() (stop func()) {
	signal.Ignore(syscall.SIGHUP)
	return func() { signal.Reset(syscall.SIGHUP) }
}

// persist renders the boot-time files of --persist kind, if any, into
// out, and writes them under --persist-dir unless it is a dry run.
func persist(c *cli.Context, out *stepsJSON, kind string, render func() ([]bridgesetup.File, error)) error {
	if kind == "" {
		return nil
	}
	files, err := render()
	if err != nil {
		return err
	}
	root := c.String("persist-dir")
	out.Files = make([]bridgeFileJSON, len(files))
	for i, f := range files {
		out.Files[i] = bridgeFileJSON{Path: filepath.Join(root, f.Path), Content: f.Content}
	}
	if out.DryRun {
		return nil
	}
	written, err := bridgesetup.WriteFiles(root, files)
	for i, w := range written {
		out.Files[i].Written, out.Files[i].Unchanged, out.Files[i].Backup = !w.Unchanged, w.Unchanged, w.Backup
	}
	return err
}

func bridgeStepsJSON(steps []bridgesetup.Step) []bridgeStepJSON {
	out := []bridgeStepJSON{}
	for _, s := range steps {
		out = append(out, bridgeStepJSON{Name: s.Name, Detail: s.Detail})
	}
	return out
}

// printSteps prints the steps one a line, then the files, then note on
// stderr when files were written; or, with --json, the whole of v, which
// holds out.
func printSteps(c *cli.Context, v any, out stepsJSON, nothing, note string) error {
	w := c.App.Writer
	if c.Bool("json") {
		return printJSON(w, v)
	}
	if len(out.Steps) == 0 {
		fmt.Fprintln(w, nothing)
	}
	for _, s := range out.Steps {
		fmt.Fprintln(w, s.Detail)
	}
	for _, f := range out.Files {
		switch {
		case out.DryRun || f.Written:
			fmt.Fprintf(w, "write %s\n", f.Path)
		case f.Unchanged:
			fmt.Fprintf(w, "%s is up to date\n", f.Path)
		}
		if f.Backup != "" {
			fmt.Fprintf(w, "  (the file it replaced is kept as %s)\n", f.Backup)
		}
	}
	if len(out.Files) > 0 && !out.DryRun {
		fmt.Fprintln(c.App.ErrWriter, note)
	}
	if out.DryRun {
		fmt.Fprintln(w, "(dry run: nothing changed)")
	}
	return nil
}
