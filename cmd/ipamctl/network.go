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
route (--aux-address DefaultGatewayIPv4), and no masquerading.`,
			ArgsUsage: " ",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "name", Required: true, Usage: "Docker network name"},
				&cli.StringFlag{Name: "subnet", Required: true, Usage: "the LAN subnet, e.g. 198.18.0.0/16"},
				&cli.StringFlag{Name: "ip-range", Usage: "the part of the subnet containers get (default: all of it)"},
				&cli.StringFlag{Name: "router", Required: true, Usage: "the LAN router, the containers' default gateway"},
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
	Subnet, IPRange          netip.Prefix // IPRange may be zero
	Gateway, Router          netip.Addr
}

func (s networkSpec) options() map[string]string {
	return map[string]string{
		"com.docker.network.bridge.name":                 s.Bridge,
		"com.docker.network.bridge.enable_ip_masquerade": "false",
	}
}

// command renders the docker CLI line doing the same, for --print.
func (s networkSpec) command() string {
	args := []string{"docker", "network", "create", "-d", "bridge", "--ipam-driver", s.IPAMDriver, "--subnet", s.Subnet.String()}
	if s.IPRange.IsValid() {
		args = append(args, "--ip-range", s.IPRange.String())
	}
	args = append(args, "--gateway", s.Gateway.String(), "--aux-address", "DefaultGatewayIPv4="+s.Router.String(),
		"-o", "com.docker.network.bridge.name="+s.Bridge, "-o", "com.docker.network.bridge.enable_ip_masquerade=false", s.Name)
	return strings.Join(args, " ")
}

// request is the Docker API body of POST /networks/create.
func (s networkSpec) request() map[string]any {
	cfg := map[string]any{
		"Subnet":             s.Subnet.String(),
		"Gateway":            s.Gateway.String(),
		"AuxiliaryAddresses": map[string]string{"DefaultGatewayIPv4": s.Router.String()},
	}
	if s.IPRange.IsValid() {
		cfg["IPRange"] = s.IPRange.String()
	}
	return map[string]any{
		"Name": s.Name, "CheckDuplicate": true, "Driver": "bridge", "Options": s.options(),
		"IPAM": map[string]any{"Driver": s.IPAMDriver, "Config": []any{cfg}},
	}
}

func networkCreate(c *cli.Context) error {
	if _, err := positional(c, 0, 0); err != nil {
		return err
	}
	n, err := pool.NewNetwork(c.String("subnet"), c.String("ip-range"))
	if err != nil {
		return err
	}
	router, err := pool.ParseAddr(c.String("router"))
	if err != nil {
		return fmt.Errorf("--router: %w", err)
	}
	if err := pool.CheckHostAddr(n.Subnet, router); err != nil {
		return fmt.Errorf("--router: %w", err)
	}
	spec := networkSpec{Name: c.String("name"), Bridge: c.String("bridge"), IPAMDriver: c.String("ipam-driver"),
		Subnet: n.Subnet, IPRange: n.IPRange, Router: router}
	if spec.Gateway, err = hostAddrOn(spec.Bridge, n.Subnet); err != nil {
		return err
	}
	if c.Bool("print") {
		_, err := fmt.Fprintln(c.App.Writer, spec.command())
		return err
	}
	id, err := createDockerNetwork(c.Context, c.String("docker-host"), spec)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.App.Writer, "created network %s (%s) on %s, gateway %s, router %s\n", spec.Name, shortID(id), spec.Bridge, spec.Gateway, spec.Router)
	return err
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
