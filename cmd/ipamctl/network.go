package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/talkingdata/ipam/bridgesetup"
	"github.com/talkingdata/ipam/pool"
)

func networkCommand() *cli.Command {
	return &cli.Command{
		Name:  "network",
		Usage: "create this host's Docker network on the shared pool",
		Subcommands: []*cli.Command{{
			Name:  "create",
			Usage: "create the flat-L2 bridge network on this host (run it once on every host)",
			Description: `Finds this host's own address in the subnet on the bridge and creates,
through the Docker API, a bridge network on that bridge with talkingdata as
IPAM, the host's address as --gateway (dockerd replaces a bridge address
that differs from the gateway), the LAN router as the containers' default
route (--aux-address DefaultGatewayIPv4), and no masquerading.

With --subnet6 the network is dual-stack (--ipv6): the same for IPv6, with
the host's own IPv6 address on the bridge as the IPv6 gateway (dockerd
deletes the bridge's other global IPv6 addresses) and --router6 as
DefaultGatewayIPv6. Free addresses are seeded one etcd key each, so a /64
pool not yet seeded by init-range needs --ip-range6 (such as a /112).`,
			ArgsUsage: " ",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "name", Required: true, Usage: "Docker network name"},
				&cli.StringFlag{Name: "subnet", Required: true, Usage: "the LAN subnet, e.g. 198.18.0.0/16"},
				&cli.StringFlag{Name: "ip-range", Usage: "the part of the subnet containers get (default: all of it)"},
				&cli.StringFlag{Name: "router", Required: true, Usage: "the LAN router, the containers' default gateway"},
				&cli.StringFlag{Name: "subnet6", Usage: "the LAN's IPv6 subnet, e.g. 2001:db8:1::/64: makes the network dual-stack"},
				&cli.StringFlag{Name: "ip-range6", Usage: "the part of the IPv6 subnet containers get, e.g. 2001:db8:1::1:0/112 (a /64 never gets seeded whole: give one unless init-range seeded the pool)"},
				&cli.StringFlag{Name: "router6", Usage: "the LAN's IPv6 router, the containers' IPv6 default gateway (required with --subnet6)"},
				&cli.StringFlag{Name: "bridge", Value: "br0", Usage: "the bridge with this host's NIC (see ipamctl bridge setup)"},
				&cli.StringFlag{Name: "ipam-driver", Value: "talkingdata", Usage: "IPAM driver name (talkingdata/ipam:latest for the managed plugin)"},
				&cli.StringFlag{Name: "docker-host", EnvVars: []string{"DOCKER_HOST"}, Value: "unix:///var/run/docker.sock", Usage: "Docker API socket"},
				&cli.BoolFlag{Name: "print", Usage: "print the equivalent docker command instead of running it"},
			},
			Action: networkCreate,
		}},
	}
}

// networkSpec is one host's network, as docker network create takes it.
type networkSpec struct {
	Name, Bridge, IPAMDriver string
	V4                       ipamConfig
	V6                       ipamConfig // zero: no IPv6
}

// ipamConfig is one address family's part of a network.
type ipamConfig struct {
	Subnet, IPRange netip.Prefix // IPRange may be zero
	Gateway, Router netip.Addr
}

// routerKey is the aux address dockerd makes the containers' default route.
func (c ipamConfig) routerKey() string {
	if c.Subnet.Addr().Is6() {
		return "DefaultGatewayIPv6"
	}
	return "DefaultGatewayIPv4"
}

func (c ipamConfig) args() []string {
	args := []string{"--subnet", c.Subnet.String()}
	if c.IPRange.IsValid() {
		args = append(args, "--ip-range", c.IPRange.String())
	}
	return append(args, "--gateway", c.Gateway.String(), "--aux-address", c.routerKey()+"="+c.Router.String())
}

func (c ipamConfig) request() map[string]any {
	cfg := map[string]any{
		"Subnet":             c.Subnet.String(),
		"Gateway":            c.Gateway.String(),
		"AuxiliaryAddresses": map[string]string{c.routerKey(): c.Router.String()},
	}
	if c.IPRange.IsValid() {
		cfg["IPRange"] = c.IPRange.String()
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

func (s networkSpec) options() map[string]string {
	return map[string]string{
		"com.docker.network.bridge.name":                 s.Bridge,
		"com.docker.network.bridge.enable_ip_masquerade": "false",
	}
}

// command renders the docker CLI line doing the same, for --print.
func (s networkSpec) command() string {
	args := []string{"docker", "network", "create", "-d", "bridge", "--ipam-driver", s.IPAMDriver}
	if s.V6.Subnet.IsValid() {
		args = append(args, "--ipv6")
	}
	for _, f := range s.families() {
		args = append(args, f.args()...)
	}
	args = append(args, "-o", "com.docker.network.bridge.name="+s.Bridge, "-o", "com.docker.network.bridge.enable_ip_masquerade=false", s.Name)
	return strings.Join(args, " ")
}

// request is the Docker API body of POST /networks/create.
func (s networkSpec) request() map[string]any {
	var configs []any
	for _, f := range s.families() {
		configs = append(configs, f.request())
	}
	req := map[string]any{
		"Name": s.Name, "CheckDuplicate": true, "Driver": "bridge", "Options": s.options(),
		"IPAM": map[string]any{"Driver": s.IPAMDriver, "Config": configs},
	}
	if s.V6.Subnet.IsValid() {
		req["EnableIPv6"] = true
	}
	return req
}

func networkCreate(c *cli.Context) error {
	if _, err := positional(c, 0, 0); err != nil {
		return err
	}
	spec := networkSpec{Name: c.String("name"), Bridge: c.String("bridge"), IPAMDriver: c.String("ipam-driver")}
	var err error
	if spec.V4, err = familyConfig(c, false); err != nil {
		return err
	}
	if c.IsSet("subnet6") || c.IsSet("ip-range6") || c.IsSet("router6") {
		if spec.V6, err = familyConfig(c, true); err != nil {
			return err
		}
	}
	for _, f := range []*ipamConfig{&spec.V4, &spec.V6} {
		if f.Subnet.IsValid() {
			if f.Gateway, err = hostAddrOn(spec.Bridge, f.Subnet); err != nil {
				return err
			}
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
	msg := fmt.Sprintf("created network %s (%s) on %s, gateway %s, router %s", spec.Name, shortID(id), spec.Bridge, spec.V4.Gateway, spec.V4.Router)
	if spec.V6.Subnet.IsValid() {
		msg += fmt.Sprintf("; IPv6 gateway %s, router %s", spec.V6.Gateway, spec.V6.Router)
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

// createDockerNetwork posts the request to the Docker API and returns the
// network id. Docker's own error message is passed on, with a hint when it
// cannot find the plugin.
func createDockerNetwork(ctx context.Context, dockerHost string, spec networkSpec) (string, error) {
	client, base, err := dockerClient(dockerHost)
	if err != nil {
		return "", err
	}
	body, _ := json.Marshal(spec.request())
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/networks/create", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("calling the Docker API at %s: %w", dockerHost, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var out struct{ ID, Message string }
	if err := json.Unmarshal(raw, &out); err != nil {
		return "", fmt.Errorf("Docker API answered %s: %s", resp.Status, bytes.TrimSpace(raw))
	}
	if resp.StatusCode/100 != 2 {
		msg := fmt.Sprintf("docker network create %s: %s", spec.Name, out.Message)
		if strings.Contains(out.Message, "not found") && strings.Contains(out.Message, spec.IPAMDriver) {
			msg += fmt.Sprintf(" (is the %s plugin running on this host? see `make run` / talkingdata-ipam)", spec.IPAMDriver)
		}
		return "", fmt.Errorf("%s", msg)
	}
	return out.ID, nil
}

// dockerClient returns an HTTP client and base URL for DOCKER_HOST-style
// addresses: unix:///path or tcp://host:port.
func dockerClient(host string) (*http.Client, string, error) {
	switch {
	case strings.HasPrefix(host, "unix://"):
		path := strings.TrimPrefix(host, "unix://")
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}
		return &http.Client{Transport: tr}, "http://docker", nil
	case strings.HasPrefix(host, "tcp://"):
		return &http.Client{}, "http://" + strings.TrimPrefix(host, "tcp://"), nil
	}
	return nil, "", fmt.Errorf("invalid --docker-host %q: want unix:///path or tcp://host:port", host)
}

func shortID(id string) string { return id[:min(len(id), 12)] }
