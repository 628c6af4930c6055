package bridgesetup

import (
	"bytes"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
)

// Config names the links.
type Config struct {
	NIC    string // the physical NIC on the flat L2 segment, e.g. eth0
	Bridge string // the bridge to put it in; "" means DefaultBridge
}

// check fills in the default bridge and refuses names the kernel would.
func (c Config) check() (Config, error) {
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if c.NIC == "" {
		return c, fmt.Errorf("bridgesetup: no NIC given")
	}
	for _, name := range []string{c.NIC, c.Bridge} {
		if len(name) > 15 {
			return c, fmt.Errorf("bridgesetup: invalid link name %q: longer than 15 bytes", name)
		}
	}
	if c.NIC == c.Bridge {
		return c, fmt.Errorf("bridgesetup: the NIC and the bridge are both %q", c.NIC)
	}
	return c, nil
}

// Plan returns the steps Setup would take now, without taking them. It is
// empty when the NIC is already a port of the bridge and nothing of its
// IP configuration is left on it.
//
// The order keeps the host reachable for as long as possible and makes
// every undo possible in reverse order:
//
//  1. create the bridge with the NIC's MAC (DHCP leases, switch port
//     security and the neighbours' ARP caches stay right) and MTU;
//  2. copy the NIC's addresses to the bridge: the bridge now has prefix
//     routes, so the routes' gateways are reachable through it;
//  3. enslave the NIC: from here on the bridge receives its frames;
//  4. move the routes (the default route included) to the bridge;
//  5. remove the addresses from the NIC. Only now, because the kernel
//     flushes every route of a link whose last IPv4 address goes away:
//     done earlier, that would take routes with it, and undoing step 4
//     would find no address on the NIC to reach the gateways through.
func (h *Host) Plan(cfg Config) ([]Step, error) {
	cfg, err := cfg.check()
	if err != nil {
		return nil, err
	}
	nic, err := h.link(cfg.NIC)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	if nic == nil {
		return nil, fmt.Errorf("bridgesetup: NIC %s not found", cfg.NIC)
	}
	if nic.Type() == "bridge" {
		return nil, fmt.Errorf("bridgesetup: %s is a bridge itself; give the physical NIC", cfg.NIC)
	}
	br, err := h.link(cfg.Bridge)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	if br != nil && br.Type() != "bridge" {
		return nil, fmt.Errorf("bridgesetup: %s exists and is a %s link, not a bridge", cfg.Bridge, br.Type())
	}
	if m := nic.Attrs().MasterIndex; m != 0 && (br == nil || m != br.Attrs().Index) {
		return nil, fmt.Errorf("bridgesetup: %s is already a port of %s", cfg.NIC, h.linkName(m))
	}

	var steps []Step
	mac, mtu := nic.Attrs().HardwareAddr, nic.Attrs().MTU
	var brAddrs []netlink.Addr
	if br == nil {
		steps = append(steps, h.createBridge(cfg.Bridge, mac, mtu))
	} else {
		if len(mac) > 0 && !bytes.Equal(br.Attrs().HardwareAddr, mac) {
			steps = append(steps, h.setMAC(cfg.Bridge, mac, br.Attrs().HardwareAddr))
		}
		if br.Attrs().Flags&net.FlagUp == 0 {
			steps = append(steps, h.linkUp(cfg.Bridge))
		}
		if brAddrs, err = h.globalAddrs(br); err != nil {
			return nil, fmt.Errorf("bridgesetup: %w", err)
		}
	}
	addrs, err := h.globalAddrs(nic)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	for _, a := range addrs {
		if !hasAddr(brAddrs, a) {
			steps = append(steps, h.copyAddress(a, cfg.NIC, cfg.Bridge))
		}
	}
	if nic.Attrs().Flags&net.FlagUp == 0 {
		steps = append(steps, h.linkUp(cfg.NIC))
	}
	if nic.Attrs().MasterIndex == 0 {
		steps = append(steps, h.enslave(cfg.NIC, cfg.Bridge))
	}
	routes, err := h.movableRoutes(nic)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	for _, r := range routes {
		steps = append(steps, h.moveRoute(r, cfg.NIC, cfg.Bridge))
	}
	// Secondaries first: with promote_secondaries off, deleting an IPv4
	// primary deletes its secondaries with it.
	for _, a := range slices.Backward(addrs) {
		steps = append(steps, h.removeAddress(a, cfg.NIC))
	}
	return steps, nil
}

// Setup bridges the NIC: it takes the steps of Plan and returns them. When
// a step fails, it undoes what it did and the error says so; the NIC is
// then configured as it was. Setup on a host that is set up does nothing.
func (h *Host) Setup(cfg Config) ([]Step, error) {
	steps, err := h.Plan(cfg)
	if err != nil {
		return nil, err
	}
	cfg, _ = cfg.check()
	return h.run(cfg.NIC, steps)
}

// PlanTeardown returns the steps Teardown would take now: Plan backwards.
// It is empty when the bridge does not exist. It refuses to delete a
// bridge that has ports besides the NIC (containers' veths: remove the
// Docker networks first), or whose addresses would have nowhere to go
// because the NIC is missing.
func (h *Host) PlanTeardown(cfg Config) ([]Step, error) {
	cfg, err := cfg.check()
	if err != nil {
		return nil, err
	}
	br, err := h.link(cfg.Bridge)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	if br == nil {
		return nil, nil
	}
	if br.Type() != "bridge" {
		return nil, fmt.Errorf("bridgesetup: %s is a %s link, not a bridge: not touching it", cfg.Bridge, br.Type())
	}
	nic, err := h.link(cfg.NIC)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	if nic == nil {
		return nil, fmt.Errorf("bridgesetup: NIC %s not found: not deleting %s, its addresses would have nowhere to go", cfg.NIC, cfg.Bridge)
	}
	ports, err := h.ports(br)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	ports = slices.DeleteFunc(ports, func(p string) bool { return p == cfg.NIC })
	if len(ports) > 0 {
		return nil, fmt.Errorf("bridgesetup: %s has other ports besides %s: %v; remove the Docker networks using it first", cfg.Bridge, cfg.NIC, ports)
	}

	brAddrs, err := h.globalAddrs(br)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	nicAddrs, err := h.globalAddrs(nic)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	var steps []Step
	for _, a := range brAddrs {
		if !hasAddr(nicAddrs, a) {
			steps = append(steps, h.copyAddress(a, cfg.Bridge, cfg.NIC))
		}
	}
	if nic.Attrs().Flags&net.FlagUp == 0 {
		steps = append(steps, h.linkUp(cfg.NIC))
	}
	routes, err := h.movableRoutes(br)
	if err != nil {
		return nil, fmt.Errorf("bridgesetup: %w", err)
	}
	for _, r := range routes {
		steps = append(steps, h.moveRoute(r, cfg.Bridge, cfg.NIC))
	}
	if nic.Attrs().MasterIndex == br.Attrs().Index {
		steps = append(steps, h.release(cfg.NIC, cfg.Bridge))
	}
	for _, a := range slices.Backward(brAddrs) {
		steps = append(steps, h.removeAddress(a, cfg.Bridge))
	}
	steps = append(steps, h.deleteBridge(cfg.Bridge, br.Attrs().HardwareAddr, br.Attrs().MTU))
	return steps, nil
}

// Teardown takes the NIC out of the bridge, gives it back the addresses
// and routes, and deletes the bridge: the steps of PlanTeardown. A missing
// bridge is torn down already. On failure it rolls back, like Setup.
func (h *Host) Teardown(cfg Config) ([]Step, error) {
	steps, err := h.PlanTeardown(cfg)
	if err != nil {
		return nil, err
	}
	cfg, _ = cfg.check()
	return h.run(cfg.Bridge+" and "+cfg.NIC, steps)
}

// hasAddr reports whether addrs holds a's address and prefix length.
func hasAddr(addrs []netlink.Addr, a netlink.Addr) bool {
	p := prefixOf(a.IPNet)
	return slices.ContainsFunc(addrs, func(b netlink.Addr) bool { return prefixOf(b.IPNet) == p })
}
