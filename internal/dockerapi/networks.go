package dockerapi

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/client"
)

// CreateNetwork creates a network and returns its id. A name already taken is refused, by
// every daemon version (see nameTaken).
func (c *Client) CreateNetwork(ctx context.Context, name string, opts client.NetworkCreateOptions) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	doing := "creating network " + name
	res, err := c.api.NetworkCreate(ctx, name, opts)
	if err != nil {
		return "", c.failed(doing, err)
	}
	for _, w := range res.Warning {
		if nameTaken(w) {
			if _, err := c.api.NetworkRemove(ctx, res.ID, client.NetworkRemoveOptions{}); err != nil {
				return "", c.failed(doing, fmt.Errorf("%s, and removing the second one (%s) failed: %w", w, ShortID(res.ID), err))
			}
			return "", c.failed(doing, errors.New(w))
		}
	}
	return res.ID, nil
}

// InUse returns every address the daemon has in use, with who has it: the endpoints of every
// network (whatever its IPAM driver: an address in use is in use), and the addresses of
// running containers, read separately so one view missing an endpoint does not make its
// address look unused.
func (c *Client) InUse(ctx context.Context) (map[netip.Addr]string, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	live := map[netip.Addr]string{}
	add := func(a netip.Addr, who string) {
		if a.IsValid() {
			live[a.Unmap()] = who
		}
	}
	networks, err := c.api.NetworkList(ctx, client.NetworkListOptions{})
	if err != nil {
		return nil, c.failed("listing networks", err)
	}
	for _, n := range networks.Items {
		detail, err := c.api.NetworkInspect(ctx, n.ID, client.NetworkInspectOptions{})
		switch {
		case cerrdefs.IsNotFound(err):
			continue // removed meanwhile, with its endpoints
		case err != nil:
			return nil, c.failed("inspecting network "+n.Name, err)
		}
		for id, ep := range detail.Network.Containers {
			who := fmt.Sprintf("endpoint %s (%s) on network %s", ep.Name, ShortID(id), n.Name)
			add(ep.IPv4Address.Addr(), who)
			add(ep.IPv6Address.Addr(), who)
		}
	}
	running, err := c.api.ContainerList(ctx, client.ContainerListOptions{})
	if err != nil {
		return nil, c.failed("listing running containers", err)
	}
	for _, ctr := range running.Items {
		if ctr.NetworkSettings == nil {
			continue
		}
		for name, n := range ctr.NetworkSettings.Networks {
			if n == nil {
				continue
			}
			who := fmt.Sprintf("running container %s on network %s", ShortID(ctr.ID), name)
			add(n.IPAddress, who)
			add(n.GlobalIPv6Address, who)
		}
	}
	return live, nil
}

// nameTaken: a daemon before API 1.44 creates a second network of the same name, warning
// this, unless the request asks it not to (CheckDuplicate), which this client no longer
// sends: later daemons always refuse.
func nameTaken(warning string) bool { return strings.Contains(warning, "already exists") }
