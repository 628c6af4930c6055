package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/bridgesetup"
)

// vlanCommand makes the 802.1Q link that macvlan and ipvlan networks sit
// on. Like bridge, it talks to the kernel only.
func vlanCommand() *cli.Command {
	flags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "nic", EnvVars: []string{"IPAM_VLAN_NIC"}, Usage: "the NIC carrying the tagged frames, e.g. eth0 (or br0)"},
			&cli.IntFlag{Name: "id", EnvVars: []string{"IPAM_VLAN_ID"}, Usage: "the VLAN id, 1-4094"},
			&cli.StringFlag{Name: "name", EnvVars: []string{"IPAM_VLAN_NAME"}, Usage: "the VLAN link (default NIC.ID, e.g. eth0.8)"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the plan, one step a line, and change nothing"},
			jsonFlag(),
		}
	}
	return &cli.Command{
		Name:  "vlan",
		Usage: "make the 802.1Q link (eth0.8) that macvlan and ipvlan networks sit on, or remove it (root; no etcd)",
		Subcommands: []*cli.Command{
			{
				Name:  "setup",
				Usage: "create the VLAN link on the NIC, up and without addresses",
				Description: `The host gets no address on the VLAN: the link only carries the containers
of "ipamctl network create --driver macvlan|ipvlan --parent NIC.ID". An
existing link that is that VLAN of that NIC is fine (set up if down); any
other link of that name, or another link carrying that VLAN on the NIC, is
refused. A failing step is undone. --persist also writes the files that
recreate the link at boot (under --persist-dir); with --dry-run it names
them and writes nothing.`,
				Flags: append(flags(),
					&cli.StringFlag{Name: "persist", EnvVars: []string{"IPAM_VLAN_PERSIST"},
						Usage: "also write boot-time configuration: " + strings.Join(bridgesetup.PersistKinds(), ", ")},
					&cli.StringFlag{Name: "persist-dir", Value: "/", Usage: "root under which --persist writes /etc/…"},
				),
				Action: vlanSetup,
			},
			{
				Name:  "teardown",
				Usage: "delete the VLAN link",
				Description: `Only the VLAN link goes; the NIC stays as it is. A missing link counts as
torn down. Refused for a link that is not that VLAN of that NIC, or that
has addresses or links on top of it here (a macvlan shim). Remove the
Docker networks on it first: the kernel deletes their containers'
interfaces with the link. Files written by setup --persist stay.`,
				Flags:  flags(),
				Action: vlanTeardown,
			},
		},
	}
}

// vlanJSON is the output of `vlan setup|teardown --json`.
type vlanJSON struct {
	NIC  string `json:"nic"`
	ID   int    `json:"id"`
	Name string `json:"name"`
	stepsJSON
}

// vlanConfig reads the flags common to both verbs.
func vlanConfig(c *cli.Context) (bridgesetup.VLAN, error) {
	if _, err := positional(c, 0, 0); err != nil {
		return bridgesetup.VLAN{}, err
	}
	if c.String("nic") == "" || !c.IsSet("id") {
		return bridgesetup.VLAN{}, fmt.Errorf("missing --nic or --id: the NIC and the VLAN id, e.g. --nic eth0 --id 8")
	}
	return bridgesetup.VLAN{NIC: c.String("nic"), ID: c.Int("id"), Name: c.String("name")}.Checked()
}

func vlanSetup(c *cli.Context) error {
	v, err := vlanConfig(c)
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

	out := vlanJSON{NIC: v.NIC, ID: v.ID, Name: v.Name}
	if out.stepsJSON, err = runSteps(c, "vlan setup", func() ([]bridgesetup.Step, error) { return h.PlanVLAN(v) },
		func() ([]bridgesetup.Step, error) { return h.SetupVLAN(v) }); err != nil {
		return err
	}
	persistErr := persist(c, &out.stepsJSON, kind, func() ([]bridgesetup.File, error) { return bridgesetup.RenderVLAN(kind, v) })
	if persistErr != nil && !out.DryRun {
		persistErr = fmt.Errorf("%s is up, but it will not survive a reboot: %w", v.Name, persistErr)
	}
	note := fmt.Sprintf("check that %s is configured at boot by the same tool", v.NIC)
	if kind == bridgesetup.Networkd {
		note = fmt.Sprintf("the VLAN= drop-in applies to 10-%s.network (ipamctl bridge setup --persist writes it); if another file configures %s (networkctl status %s names it), move the drop-in beside that one",
			v.NIC, v.NIC, v.NIC)
	}
	nothing := fmt.Sprintf("nothing to do: %s is VLAN %d of %s, up", v.Name, v.ID, v.NIC)
	if err := printSteps(c, out, out.stepsJSON, nothing, note); err != nil {
		return err
	}
	return persistErr
}

func vlanTeardown(c *cli.Context) error {
	v, err := vlanConfig(c)
	if err != nil {
		return err
	}
	h, err := bridgesetup.New()
	if err != nil {
		return err
	}
	defer h.Close()

	out := vlanJSON{NIC: v.NIC, ID: v.ID, Name: v.Name}
	if out.stepsJSON, err = runSteps(c, "vlan teardown", func() ([]bridgesetup.Step, error) { return h.PlanVLANTeardown(v) },
		func() ([]bridgesetup.Step, error) { return h.TeardownVLAN(v) }); err != nil {
		return err
	}
	return printSteps(c, out, out.stepsJSON, "nothing to do: no link "+v.Name, "")
}
