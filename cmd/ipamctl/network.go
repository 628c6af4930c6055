package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/bridgesetup"
	"github.com/talkingdata/ipam/internal/dockerapi"
	"github.com/talkingdata/ipam/ipam"
	"github.com/talkingdata/ipam/pool"
)

// Docker network drivers network create knows.
const (
	driverBridge  = "bridge"
	driverMacvlan = "macvlan"
	driverIPvlan  = "ipvlan"
)

func networkCommand() *cli.Command {
	return &cli.Command{
		Name:  "network",
		Usage: "create this host's Docker network on the shared pool",
		Subcommands: []*cli.Command{{
			Name:  "create",
			Usage: "create the flat-L2 network on this host (run it once on every host)",
			Description: `--driver bridge (the default): finds this host's own address in the subnet
on the bridge and creates, through the Docker API, a bridge network on that
bridge with talkingdata as IPAM, the host's address as --gateway (dockerd
replaces a bridge address that differs from the gateway), the LAN router as
the containers' default route (--aux-address DefaultGatewayIPv4), and no
masquerading.

--driver macvlan|ipvlan --parent eth0.8: containers get their own
interfaces on the parent link's segment (ipamctl vlan setup makes an 802.1Q
parent). No host address is involved: the gateway is the LAN router, which
every host's network names, so the network is created with --ipam-opt
talkingdata.gateway=router and the router as --gateway (a shared reference
per host in etcd, where a bridge network's gateway is one host's own).
Containers on it cannot reach this host's own addresses through the parent:
see docs/OPERATIONS.md for the shim interface that allows it. ipvlan runs in
L2 mode, the only one whose containers sit on the segment.

With --subnet6 the network is dual-stack (--ipv6): the same for IPv6, with
--router6 as the IPv6 router; on a bridge the host's own IPv6 address on the
bridge is the IPv6 gateway (dockerd deletes the bridge's other global IPv6
addresses). Free addresses are seeded one etcd key each, so a /64 pool not
yet seeded by init-range needs --ip-range6 (such as a /112).

--config-only makes the same network as a swarm configuration instead: run
it on every node (each with its own gateway), then once on a manager
docker network create -d DRIVER --scope swarm --config-from NAME SWARMNAME.
Each node's plugin then allocates its tasks' addresses from the shared pool.`,
			ArgsUsage: " ",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "name", Required: true, Usage: "Docker network name"},
				&cli.StringFlag{Name: "subnet", Required: true, Usage: "the LAN subnet, e.g. 198.18.0.0/16"},
				&cli.StringFlag{Name: "ip-range", Usage: "the part of the subnet containers get (default: all of it)"},
				&cli.StringFlag{Name: "router", Required: true, Usage: "the LAN router, the containers' default gateway"},
				&cli.StringFlag{Name: "subnet6", Usage: "the LAN's IPv6 subnet, e.g. 2001:db8:1::/64: makes the network dual-stack"},
				&cli.StringFlag{Name: "ip-range6", Usage: "the part of the IPv6 subnet containers get, e.g. 2001:db8:1::1:0/112 (a /64 never gets seeded whole: give one unless init-range seeded the pool)"},
				&cli.StringFlag{Name: "router6", Usage: "the LAN's IPv6 router, the containers' IPv6 default gateway (required with --subnet6)"},
				&cli.StringFlag{Name: "driver", Value: driverBridge, Usage: "Docker network driver: bridge, macvlan or ipvlan"},
				&cli.StringFlag{Name: "bridge", Value: "br0", Usage: "with --driver bridge: the bridge with this host's NIC (see ipamctl bridge setup)"},
				&cli.StringFlag{Name: "parent", Usage: "with --driver macvlan|ipvlan: the link the containers' interfaces sit on, e.g. eth0.8 (see ipamctl vlan setup)"},
				&cli.StringFlag{Name: "ipvlan-mode", Value: "l2", Usage: "with --driver ipvlan: l2 (the only mode with containers on the segment)"},
				&cli.StringFlag{Name: "ipam-driver", Value: "talkingdata", Usage: "IPAM driver name (talkingdata/ipam:latest for the managed plugin)"},
				dockerHostFlag("this host's Docker API"),
				&cli.BoolFlag{Name: "sticky", Usage: "bind each container's address to its name, on every host: the next container of that name gets it again (Docker 29 and later; --ipam-opt talkingdata.sticky=name)"},
				&cli.BoolFlag{Name: "config-only", Usage: "create this node's configuration of a swarm network (docker network create --config-only) instead of a network"},
				&cli.BoolFlag{Name: "print", Usage: "print the equivalent docker command instead of running it"},
			},
			Action: networkCreate,
		}},
	}
}

// networkSpec is one host's network, as docker network create takes it.
type networkSpec struct {
	Name, Driver, IPAMDriver string
	// ConfigOnly: this node's configuration of a swarm network, which
	// takes its driver from the --config-from network instead.
	ConfigOnly         bool
	Sticky             bool   // addresses bound to container names
	Bridge             string // bridge driver only
	Parent, IPvlanMode string // macvlan and ipvlan only
	V4                 ipamConfig
	V6                 ipamConfig // zero: no IPv6
}

// ipamConfig is one address family's part of a network.
type ipamConfig struct {
	Subnet, IPRange netip.Prefix // IPRange may be zero
	Gateway, Router netip.Addr   // the same on macvlan and ipvlan
}

// auxKey: on a bridge the gateway is the host, so the router comes as the
// containers' default route, the aux address of this name; on macvlan and
// ipvlan it is the gateway itself: "".
func (c ipamConfig) auxKey() string {
	switch {
	case c.Gateway == c.Router:
		return ""
	case c.Subnet.Addr().Is6():
		return "DefaultGatewayIPv6"
	}
	return "DefaultGatewayIPv4"
}

func (c ipamConfig) args() []string {
	args := []string{"--subnet", c.Subnet.String()}
	if c.IPRange.IsValid() {
		args = append(args, "--ip-range", c.IPRange.String())
	}
	args = append(args, "--gateway", c.Gateway.String())
	if k := c.auxKey(); k != "" {
		args = append(args, "--aux-address", k+"="+c.Router.String())
	}
	return args
}

func (c ipamConfig) request() network.IPAMConfig {
	cfg := network.IPAMConfig{Subnet: c.Subnet, IPRange: c.IPRange, Gateway: c.Gateway}
	if k := c.auxKey(); k != "" {
		cfg.AuxAddress = map[string]netip.Addr{k: c.Router}
	}
	return cfg
}

// families are the network's address families: IPv4, and IPv6 if set.
func (s networkSpec) families() []ipamConfig {
	if s.V6.Subnet.IsValid() {
		return []ipamConfig{s.V4, s.V6}
	}
	return []ipamConfig{s.V4}
}

// option is one key=value of -o or --ipam-opt; ordered, for command.
type option struct{ key, value string }

func (s networkSpec) options() []option {
	switch s.Driver {
	case driverMacvlan:
		return []option{{"parent", s.Parent}}
	case driverIPvlan:
		return []option{{"parent", s.Parent}, {"ipvlan_mode", s.IPvlanMode}}
	}
	return []option{
		{"com.docker.network.bridge.name", s.Bridge},
		{"com.docker.network.bridge.enable_ip_masquerade", "false"},
	}
}

// ipamOptions: the router is the gateway of every host's macvlan and
// ipvlan network, which the driver must hold as shared; a sticky network
// says so.
func (s networkSpec) ipamOptions() []option {
	var opts []option
	if s.Driver != driverBridge {
		opts = append(opts, option{ipam.OptGateway, ipam.GatewayRouter})
	}
	if s.Sticky {
		opts = append(opts, option{ipam.OptSticky, ipam.StickyName})
	}
	return opts
}

func optionMap(opts []option) map[string]string {
	m := map[string]string{}
	for _, o := range opts {
		m[o.key] = o.value
	}
	return m
}

// command renders the docker CLI line doing the same, for --print.
func (s networkSpec) command() string {
	args := []string{"docker", "network", "create"}
	if s.ConfigOnly {
		args = append(args, "--config-only")
	} else {
		args = append(args, "-d", s.Driver)
	}
	args = append(args, "--ipam-driver", s.IPAMDriver)
	for _, o := range s.ipamOptions() {
		args = append(args, "--ipam-opt", o.key+"="+o.value)
	}
	if s.V6.Subnet.IsValid() {
		args = append(args, "--ipv6")
	}
	for _, f := range s.families() {
		args = append(args, f.args()...)
	}
	for _, o := range s.options() {
		args = append(args, "-o", o.key+"="+o.value)
	}
	return strings.Join(append(args, s.Name), " ")
}

// request is what the Docker API's network create takes.
func (s networkSpec) request() client.NetworkCreateOptions {
	ipamCfg := &network.IPAM{Driver: s.IPAMDriver}
	for _, f := range s.families() {
		ipamCfg.Config = append(ipamCfg.Config, f.request())
	}
	if opts := s.ipamOptions(); opts != nil {
		ipamCfg.Options = optionMap(opts)
	}
	req := client.NetworkCreateOptions{Driver: s.Driver, ConfigOnly: s.ConfigOnly, Options: optionMap(s.options()), IPAM: ipamCfg}
	if s.ConfigOnly {
		req.Driver = "" // the swarm network's, from --config-from
	}
	if s.V6.Subnet.IsValid() {
		req.EnableIPv6 = new(true)
	}
	return req
}

// networkDriver checks the driver flags and fills them into spec.
func networkDriver(c *cli.Context, spec *networkSpec) error {
	spec.Driver = c.String("driver")
	switch spec.Driver {
	case driverBridge:
		if c.IsSet("parent") || c.IsSet("ipvlan-mode") {
			return errors.New("--parent and --ipvlan-mode are for --driver macvlan|ipvlan; a bridge network uses --bridge")
		}
		spec.Bridge = c.String("bridge")
		return nil
	case driverMacvlan, driverIPvlan:
	default:
		return fmt.Errorf("invalid --driver %q: want bridge, macvlan or ipvlan", spec.Driver)
	}
	if c.IsSet("bridge") {
		return fmt.Errorf("--bridge is for --driver bridge; a %s network uses --parent", spec.Driver)
	}
	if spec.Driver == driverMacvlan && c.IsSet("ipvlan-mode") {
		return errors.New("--ipvlan-mode is for --driver ipvlan")
	}
	if spec.Driver == driverIPvlan {
		if spec.IPvlanMode = c.String("ipvlan-mode"); spec.IPvlanMode != "l2" {
			return fmt.Errorf("invalid --ipvlan-mode %q: only l2 puts containers on the segment, with the router as their gateway", spec.IPvlanMode)
		}
	}
	if spec.Parent = c.String("parent"); spec.Parent == "" {
		return fmt.Errorf("missing --parent: the link %s containers sit on, e.g. --parent eth0.8", spec.Driver)
	}
	return nil
}

func networkCreate(c *cli.Context) error {
	if _, err := positional(c, 0, 0); err != nil {
		return err
	}
	spec := networkSpec{Name: c.String("name"), IPAMDriver: c.String("ipam-driver"), ConfigOnly: c.Bool("config-only"), Sticky: c.Bool("sticky")}
	if err := networkDriver(c, &spec); err != nil {
		return err
	}
	var err error
	if spec.V4, err = familyConfig(c, false); err != nil {
		return err
	}
	if c.IsSet("subnet6") || c.IsSet("ip-range6") || c.IsSet("router6") {
		if spec.V6, err = familyConfig(c, true); err != nil {
			return err
		}
	}
	on := spec.Bridge
	if spec.Driver != driverBridge {
		on = spec.Parent
		if err := checkParent(spec.Parent); err != nil {
			return err
		}
	}
	for _, f := range []*ipamConfig{&spec.V4, &spec.V6} {
		switch {
		case !f.Subnet.IsValid():
		case spec.Driver == driverBridge:
			if f.Gateway, err = hostAddrOn(spec.Bridge, f.Subnet); err != nil {
				return err
			}
		default:
			f.Gateway = f.Router
		}
	}
	if c.Bool("print") {
		_, err := fmt.Fprintln(c.App.Writer, spec.command())
		return err
	}
	id, err := createDockerNetwork(c.Context, c.String("docker-host"), spec)
	if err != nil {
		return err
	}
	network := "network"
	if spec.ConfigOnly {
		network = "config-only network"
	}
	var msg string
	if spec.Driver == driverBridge {
		msg = fmt.Sprintf("created %s %s (%s) on %s, gateway %s, router %s", network, spec.Name, dockerapi.ShortID(id), on, spec.V4.Gateway, spec.V4.Router)
		if spec.V6.Subnet.IsValid() {
			msg += fmt.Sprintf("; IPv6 gateway %s, router %s", spec.V6.Gateway, spec.V6.Router)
		}
	} else {
		msg = fmt.Sprintf("created %s %s %s (%s) on %s, gateway %s (the LAN router)", spec.Driver, network, spec.Name, dockerapi.ShortID(id), on, spec.V4.Gateway)
		if spec.V6.Subnet.IsValid() {
			msg += fmt.Sprintf("; IPv6 gateway %s", spec.V6.Gateway)
		}
	}
	if spec.ConfigOnly {
		msg += fmt.Sprintf("; once every node has it, on a manager: docker network create -d %s --scope swarm --config-from %s NAME", spec.Driver, spec.Name)
	}
	_, err = fmt.Fprintln(c.App.Writer, msg)
	return err
}

// familyConfig reads one address family's flags (--subnet, --ip-range,
// --router, or those ending in 6); the gateway is left to find.
func familyConfig(c *cli.Context, v6 bool) (ipamConfig, error) {
	sfx, family := "", "IPv4"
	if v6 {
		sfx, family = "6", "IPv6"
	}
	if c.String("subnet"+sfx) == "" || c.String("router"+sfx) == "" {
		return ipamConfig{}, fmt.Errorf("--subnet%s and --router%s are both needed", sfx, sfx)
	}
	n, err := pool.NewNetwork(c.String("subnet"+sfx), c.String("ip-range"+sfx))
	if err != nil {
		return ipamConfig{}, fmt.Errorf("--subnet%s: %w", sfx, err)
	}
	if n.Subnet.Addr().Is6() != v6 {
		return ipamConfig{}, fmt.Errorf("--subnet%s %s is not an %s subnet", sfx, n.Subnet, family)
	}
	router, err := pool.ParseAddr(c.String("router" + sfx))
	if err == nil {
		err = pool.CheckHostAddr(n.Subnet, router)
	}
	if err != nil {
		return ipamConfig{}, fmt.Errorf("--router%s: %w", sfx, err)
	}
	return ipamConfig{Subnet: n.Subnet, IPRange: n.IPRange, Router: router}, nil
}

// checkParent refuses a parent link this host lacks: dockerd would make a
// VLAN link named like eth0.8 itself, and delete it with the network.
func checkParent(name string) error {
	ok, err := bridgesetup.HasLink(name)
	if err != nil || ok {
		return err
	}
	msg := fmt.Sprintf("parent link %s not found on this host", name)
	if nic, id, dot := strings.Cut(name, "."); dot {
		msg += fmt.Sprintf(": create it with `ipamctl vlan setup --nic %s --id %s`", nic, id)
	}
	return errors.New(msg)
}

// hostAddrOn is this host's address in subnet on the bridge.
func hostAddrOn(bridge string, subnet netip.Prefix) (netip.Addr, error) {
	addrs, err := bridgesetup.Addrs(bridge)
	if err != nil {
		return netip.Addr{}, err
	}
	var have []string
	for _, p := range addrs {
		if subnet.Contains(p.Addr()) {
			return p.Addr(), nil
		}
		have = append(have, p.String())
	}
	if len(have) == 0 {
		have = []string{"none"}
	}
	return netip.Addr{}, fmt.Errorf("bridge %s has no address in %s (it has: %s); this host's LAN address must be on the bridge",
		bridge, subnet, strings.Join(have, ", "))
}

// createDockerNetwork creates the network through the Docker API and
// returns its id, with a hint when dockerd cannot find the plugin.
func createDockerNetwork(ctx context.Context, dockerHost string, spec networkSpec) (string, error) {
	d, err := dockerapi.New(dockerHost)
	if err != nil {
		return "", err
	}
	defer d.Close()
	id, err := d.CreateNetwork(ctx, spec.Name, spec.request())
	if err != nil && strings.Contains(err.Error(), "not found") && strings.Contains(err.Error(), spec.IPAMDriver) {
		return "", fmt.Errorf("%w (is the %s plugin running on this host? see `make run` / talkingdata-ipam)", err, spec.IPAMDriver)
	}
	return id, err
}

// dockerHostFlag is --docker-host of network create and gc.
func dockerHostFlag(usage string) cli.Flag {
	return &cli.StringFlag{Name: "docker-host", EnvVars: []string{"DOCKER_HOST"}, Value: dockerapi.DefaultHost,
		Usage: usage + ": unix:///path, tcp://host:port (TLS from DOCKER_TLS_VERIFY and DOCKER_CERT_PATH) or ssh://[user@]host"}
}
