// Package ipam maps Docker's remote IPAM protocol onto the pool rules.
package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	api "github.com/docker/go-plugins-helpers/ipam"

	"github.com/talkingdata/ipam/pool"
)

// Option keys dockerd sends in RequestAddress.
const (
	optRequestType = "RequestAddressType"
	typeGateway    = "com.docker.network.gateway"
	optMAC         = "com.docker.network.endpoint.macaddress"
	optEndpoint    = "com.docker.network.endpoint.name"
)

// OptionPrefix marks --ipam-opt keys meant for this driver; an unknown
// one is refused rather than silently ignored.
const OptionPrefix = "talkingdata."

// OptGateway=GatewayRouter (--ipam-opt talkingdata.gateway=router) says
// that the network's gateway is the LAN router, which no host owns and
// every host's network names: macvlan and ipvlan networks, whose
// containers sit on the parent link's segment and route through it.
// dockerd sends such a network's gateway request exactly as a bridge
// network's, whose gateway it configures on this host's bridge and which
// must therefore be one host's own; only this option, carried in the
// PoolID, tells them apart. Never use it with the bridge driver: dockerd
// would put the router's address on the bridge.
const (
	OptGateway    = OptionPrefix + "gateway"
	GatewayRouter = "router"
)

// OptSticky=StickyName (--ipam-opt talkingdata.sticky=name) binds each
// container's address to its name, for every host: the next container of
// that name gets it again, with no --ip. dockerd sends the name from
// Docker 29 on; carried in the PoolID like OptGateway.
const (
	OptSticky  = OptionPrefix + "sticky"
	StickyName = "name"
)

// AddressSpace is where every pool talkingdata serves lives; pools are named
// by subnet. GlobalAddressSpace is the one swarm's managers allocate in
// (swarmkit's cnmallocator takes a driver's global default), which
// talkingdata refuses: there the managers allocate each task's address
// and every node then requests that same address again for its endpoint,
// which a pool shared by all nodes must refuse as taken. Swarm services get
// their addresses from the nodes instead, through --config-from networks,
// which request pools in the local address space.
const (
	AddressSpace       = "talkingdata"
	GlobalAddressSpace = "talkingdata-global"
)

// errSwarmAllocated names the fix for a pool requested by swarm's
// allocator; dockerd logs it as "Failed allocation for network …".
var errSwarmAllocated = errors.New("talkingdata does not serve networks whose addresses swarm's managers allocate (overlay): " +
	"each node would request its tasks' addresses again from the shared pool. Instead, on every node create a --config-only network " +
	"with --ipam-driver talkingdata/ipam:latest (ipamctl network create --config-only), then on a manager " +
	"docker network create -d bridge (or macvlan, ipvlan) --scope swarm --config-from; see docs/OPERATIONS.md, Swarm")

var _ api.Ipam = (*Driver)(nil)

// Driver answers dockerd's IPAM calls.
type Driver struct {
	Pools *pool.Pools
	// Timeout bounds every call: dockerd has no timeout of its own for
	// legacy plugins, so a call that waited on a dead etcd would hang it.
	Timeout time.Duration
	// LocalAddrs lists this host's own addresses; a gateway request
	// without --gateway takes the one inside the subnet.
	LocalAddrs func() ([]netip.Addr, error)
	// StoreName names the store in errors, e.g. "etcd http://10.0.0.1:2379".
	StoreName string
	Log       *slog.Logger
	// Pending keeps the releases the store refused for want of space
	// (pool.ErrNoSpace), to apply them once it has room: dockerd takes a
	// failed release as final and never repeats it. Without it such a
	// release fails, and the address stays used until `ipamctl gc`.
	Pending PendingReleases
	// NoEndpointMAC asks dockerd for no endpoint MAC: its ipvlan driver
	// refuses endpoints that have one. Endpoints are then told apart by
	// name, which only Docker >= 29 sends (pool.Allocation.Owner).
	NoEndpointMAC bool

	nameless sync.Map // PoolIDs of sticky networks whose dockerd sends no endpoint name: logged once, listed by NamelessSticky
}

// sticky is the name a request's address is bound to on a sticky network,
// or "" when dockerd sent none (before Docker 29): the request then gets
// an ordinary address, and the daemon says so once per network.
func (d *Driver) sticky(poolID, endpoint string) string {
	if endpoint != "" {
		// A dockerd upgraded to 29 while the daemon ran: no longer nameless.
		d.nameless.Delete(poolID)
		return stickyName(endpoint)
	}
	if _, logged := d.nameless.LoadOrStore(poolID, true); !logged {
		d.Log.Warn("a sticky network's dockerd sent no endpoint name: its containers get ordinary addresses (stickiness needs Docker 29 or later)", "pool", poolID)
	}
	return ""
}

// NamelessSticky lists the subnets of the sticky networks whose dockerd
// sends no endpoint names, as sticky last found: the host's liveness
// record carries them to ipamctl status (etcdstore.LastSeen).
func (d *Driver) NamelessSticky() []string {
	var out []string
	d.nameless.Range(func(id, _ any) bool {
		if r, err := ParsePoolID(id.(string)); err == nil {
			out = append(out, r.Subnet.String())
		}
		return true
	})
	slices.Sort(out)
	return slices.Compact(out)
}

// PendingReleases keeps a refused release durably (releasequeue.Queue).
type PendingReleases interface {
	Add(pool.Pending) error
}

func (d *Driver) context() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d.Timeout)
}

// explain turns a failure into a message an operator can act on.
func (d *Driver) explain(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, pool.ErrNoSpace):
		return fmt.Errorf("%s is out of space (its NOSPACE alarm is raised): it refuses every change until an operator makes room; see docs/OPERATIONS.md, \"etcd out of space (NOSPACE)\": %w",
			d.StoreName, err)
	// A transient error that outlived the retries means the same to the
	// operator: etcd did not settle the call within the request's time.
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, pool.ErrTransient):
		return fmt.Errorf("no answer from %s within %s (--request-timeout): %w", d.StoreName, d.Timeout, err)
	case errors.Is(err, pool.ErrUnknownPool):
		return fmt.Errorf("%w (if it was removed with ipamctl pool rm, re-create the Docker network)", err)
	}
	return err
}

func (d *Driver) GetCapabilities() (*api.CapabilitiesResponse, error) {
	// The MAC tells a retried request from a new endpoint (the owner
	// index) and operators one holder from another. No request replay: the
	// state lives in etcd, not in dockerd.
	return &api.CapabilitiesResponse{RequiresMACAddress: !d.NoEndpointMAC}, nil
}

func (d *Driver) GetDefaultAddressSpaces() (*api.AddressSpacesResponse, error) {
	return &api.AddressSpacesResponse{LocalDefaultAddressSpace: AddressSpace, GlobalDefaultAddressSpace: GlobalAddressSpace}, nil
}

// PoolRef is what a PoolID names: the network, and whether its gateway is
// the LAN router (OptGateway).
type PoolRef struct {
	pool.Network
	RouterGateway bool
	Sticky        bool
}

const (
	routerSuffix = ";" + "gateway=" + GatewayRouter
	stickySuffix = ";" + "sticky=" + StickyName
)

// PoolID is deterministic (dockerd stores it across restarts, and sends no
// options after RequestPool): the subnet, "@" and the ip-range when one
// was given, ";gateway=router" with OptGateway and ";sticky=name" with
// OptSticky.
func PoolID(r PoolRef) string {
	id := r.Subnet.String()
	if r.IPRange.IsValid() {
		id += "@" + r.IPRange.String()
	}
	if r.RouterGateway {
		id += routerSuffix
	}
	if r.Sticky {
		id += stickySuffix
	}
	return id
}

// ParsePoolID reverses PoolID.
func ParsePoolID(id string) (PoolRef, error) {
	base, sticky := strings.CutSuffix(id, stickySuffix)
	base, router := strings.CutSuffix(base, routerSuffix)
	subnet, ipRange, _ := strings.Cut(base, "@")
	n, err := pool.NewNetwork(subnet, ipRange)
	r := PoolRef{Network: n, RouterGateway: router, Sticky: sticky}
	if err != nil || PoolID(r) != id {
		return PoolRef{}, fmt.Errorf("unknown PoolID %q: not one this driver issued", id)
	}
	return r, nil
}

// poolOptions reads the --ipam-opt keys of this driver into r.
func poolOptions(opts map[string]string, r *PoolRef) error {
	for k, v := range opts {
		switch {
		case k == OptGateway && v == GatewayRouter:
			r.RouterGateway = true
		case k == OptGateway:
			return fmt.Errorf("invalid --ipam-opt %s=%q: the only value is %q (the network's gateway is the LAN router: macvlan, ipvlan)",
				k, v, GatewayRouter)
		case k == OptSticky && v == StickyName:
			r.Sticky = true
		case k == OptSticky:
			return fmt.Errorf("invalid --ipam-opt %s=%q: the only value is %q (each container's address is bound to its name)", k, v, StickyName)
		case strings.HasPrefix(k, OptionPrefix):
			return fmt.Errorf("unsupported --ipam-opt %q: talkingdata knows %s=%s and %s=%s", k, OptGateway, GatewayRouter, OptSticky, StickyName)
		}
	}
	return nil
}

// stickyName is the name a container's address is bound to: its own, but
// for a swarm task (service.slot.taskid, a new task id each time) the
// service and slot, which a replacement task keeps.
func stickyName(endpoint string) string {
	if parts := strings.Split(endpoint, "."); len(parts) >= 3 && isTaskID(parts[len(parts)-1]) {
		return strings.Join(parts[:len(parts)-1], ".")
	}
	return endpoint
}

// isTaskID says whether s looks like a swarm task id: 25 lower-case
// letters and digits.
func isTaskID(s string) bool {
	if len(s) != 25 {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func (d *Driver) RequestPool(r *api.RequestPoolRequest) (*api.RequestPoolResponse, error) {
	// talkingdata has no default pools: dockerd asks for one (Pool "")
	// when a network has no --subnet of that family, IPv6 included.
	switch {
	case r.AddressSpace == GlobalAddressSpace:
		return nil, errSwarmAllocated
	case r.AddressSpace != AddressSpace && r.AddressSpace != "":
		return nil, fmt.Errorf("unknown address space %q: talkingdata serves only %q", r.AddressSpace, AddressSpace)
	case r.Pool == "" && r.V6:
		return nil, errors.New("an IPv6 subnet is required with --ipv6: add --subnet 2001:db8:…/64 --ip-range 2001:db8:…/112 (a /64 is too large to seed whole)")
	case r.Pool == "":
		return nil, errors.New("a subnet is required: docker network create --ipam-driver talkingdata --subnet CIDR [--ip-range CIDR] …")
	}
	var ref PoolRef
	if err := poolOptions(r.Options, &ref); err != nil {
		return nil, err
	}
	n, err := pool.NewNetwork(r.Pool, r.SubPool)
	if err != nil {
		return nil, err
	}
	if r.V6 != n.Subnet.Addr().Is6() {
		family := "IPv4"
		if r.V6 {
			family = "IPv6"
		}
		return nil, fmt.Errorf("subnet %s is not of the requested address family (%s)", n.Subnet, family)
	}
	ctx, cancel := d.context()
	defer cancel()
	if err := d.Pools.Attach(ctx, n); err != nil {
		return nil, d.explain(ctx, err)
	}
	ref.Network = n
	id := PoolID(ref)
	d.Log.Info("pool attached", "pool", id)
	return &api.RequestPoolResponse{PoolID: id, Pool: n.Subnet.String(), Data: map[string]string{}}, nil
}

func (d *Driver) ReleasePool(r *api.ReleasePoolRequest) error {
	ref, err := ParsePoolID(r.PoolID)
	if err != nil {
		return err
	}
	ctx, cancel := d.context()
	defer cancel()
	if err := d.Pools.Detach(ctx, ref.Subnet); err != nil {
		return d.explain(ctx, err)
	}
	d.Log.Info("pool released", "pool", r.PoolID)
	return nil
}

func (d *Driver) RequestAddress(r *api.RequestAddressRequest) (*api.RequestAddressResponse, error) {
	ref, err := ParsePoolID(r.PoolID)
	if err != nil {
		return nil, err
	}
	n := ref.Network
	var want netip.Addr
	if r.Address != "" {
		if want, err = pool.ParseAddr(r.Address); err != nil {
			return nil, fmt.Errorf("invalid Address %q in RequestAddress", r.Address)
		}
	}
	ctx, cancel := d.context()
	defer cancel()
	var got netip.Addr
	kind := pool.KindContainer
	switch {
	case r.Options[optRequestType] == typeGateway && ref.RouterGateway:
		// The LAN router: this host's reference, shared with every other
		// network naming it, exactly like the router as --aux-address.
		kind = pool.KindAux
		if !want.IsValid() {
			return nil, fmt.Errorf("pool %s has the LAN router as gateway (--ipam-opt %s=%s): give the router as --gateway",
				r.PoolID, OptGateway, GatewayRouter)
		}
		got, err = want, d.Pools.Aux(ctx, n, want)
	case r.Options[optRequestType] == typeGateway:
		kind = pool.KindGateway
		local := d.localAddr(n.Subnet, want)
		given := want.IsValid()
		if !given {
			want = local
		}
		got, err = d.Pools.Gateway(ctx, n, want, local.IsValid() && local == want)
		if errors.Is(err, pool.ErrUnavailable) && given && local != want {
			err = fmt.Errorf("%w (if %s is the LAN router of a macvlan or ipvlan network, create the network with --ipam-opt %s=%s)",
				err, want, OptGateway, GatewayRouter)
		}
	case len(r.Options) == 0 && want.IsValid():
		// dockerd sends no options at all for --aux-address, and at least
		// the endpoint's name (Docker >= 29) or MAC with every endpoint
		// request; one that fell back to no capabilities sends no MAC.
		kind = pool.KindAux
		got, err = want, d.Pools.Aux(ctx, n, want)
	case len(r.Options) == 0 && d.NoEndpointMAC:
		// Also, such a dockerd's --ip request would pass for an aux one.
		err = fmt.Errorf("this daemon runs with --endpoint-mac=false, which needs Docker 29 or later: this dockerd sent neither MAC nor endpoint name, so a retried request could not be told from a new container; run the daemon with --endpoint-mac=true (the default): ipvlan networks need Docker 29 or later")
	default:
		a := pool.Allocation{Kind: pool.KindContainer, Endpoint: r.Options[optEndpoint]}
		if ref.Sticky && !want.IsValid() {
			a.Sticky = d.sticky(r.PoolID, a.Endpoint)
		}
		if mac := r.Options[optMAC]; mac != "" {
			hw, err := net.ParseMAC(mac)
			if err != nil {
				return nil, fmt.Errorf("invalid option %s=%q", optMAC, mac)
			}
			a.MAC = hw.String()
		}
		got, err = d.Pools.Allocate(ctx, n, want, a)
	}
	if err != nil {
		d.Log.Warn("address refused", "pool", r.PoolID, "kind", kind, "address", r.Address, "err", err)
		return nil, d.explain(ctx, err)
	}
	d.Log.Info("address allocated", "pool", r.PoolID, "kind", kind, "address", got)
	return &api.RequestAddressResponse{Address: netip.PrefixFrom(got, n.Subnet.Bits()).String(), Data: map[string]string{}}, nil
}

// localAddr is this host's own address in subnet, preferring want: want
// itself when the host has it, else the first one it has, else none.
func (d *Driver) localAddr(subnet netip.Prefix, want netip.Addr) netip.Addr {
	if d.LocalAddrs == nil {
		return netip.Addr{}
	}
	addrs, err := d.LocalAddrs()
	if err != nil {
		d.Log.Warn("listing local addresses", "err", err)
	}
	var first netip.Addr
	for _, a := range addrs {
		if a == want {
			return a
		}
		if !first.IsValid() && pool.CheckHostAddr(subnet, a) == nil {
			first = a
		}
	}
	return first
}

func (d *Driver) ReleaseAddress(r *api.ReleaseAddressRequest) error {
	ref, err := ParsePoolID(r.PoolID)
	if err != nil {
		return err
	}
	addr, err := pool.ParseAddr(r.Address)
	if err != nil {
		return fmt.Errorf("invalid Address %q in ReleaseAddress", r.Address)
	}
	// Answered before its commit when it can be (pool.ReleaseBehind):
	// dockerd goes on tearing the container down meanwhile.
	if d.Pools.ReleaseBehind(ref.Subnet, addr, d.Timeout, func(released bool, err error) error {
		ctx, cancel := d.context()
		defer cancel()
		err = d.endRelease(ctx, r.PoolID, ref.Subnet, addr, released, err)
		switch {
		case errors.Is(err, pool.ErrUnavailable):
			// Not this host's any more (gc or an operator released it,
			// another host took it): nothing stays behind.
			d.Log.Warn("release refused", "pool", r.PoolID, "address", addr, "err", err)
			return nil
		case err != nil:
			d.Log.Warn("release failed after dockerd was answered: the address stays used until `ipamctl gc` releases it", "pool", r.PoolID, "address", addr, "err", err)
		}
		return err
	}) {
		return nil
	}
	ctx, cancel := d.context()
	defer cancel()
	released, err := d.Pools.Release(ctx, ref.Subnet, addr)
	if err := d.endRelease(ctx, r.PoolID, ref.Subnet, addr, released, err); err != nil {
		d.Log.Warn("release refused", "pool", r.PoolID, "address", addr, "err", err)
		return d.explain(ctx, err)
	}
	return nil
}

// endRelease logs a release the store has answered, after handing one etcd
// refused for want of space to d.Pending. It returns the error left.
func (d *Driver) endRelease(ctx context.Context, poolID string, subnet netip.Prefix, addr netip.Addr, released bool, err error) error {
	if errors.Is(err, pool.ErrNoSpace) && d.Pending != nil {
		return d.keep(ctx, subnet, addr, err) // logs what it kept
	}
	switch {
	case err != nil:
		return err
	case released:
		d.Log.Info("address released", "pool", poolID, "address", addr)
	default:
		d.Log.Info("address was not held by this host; nothing to release", "pool", poolID, "address", addr)
	}
	return nil
}

// keep hands a release refused for want of space to d.Pending, so that
// dockerd can be answered with success. It fails with refused when it
// cannot keep it.
func (d *Driver) keep(ctx context.Context, subnet netip.Prefix, addr netip.Addr, refused error) error {
	r, ok, err := d.Pools.PendingRelease(ctx, subnet, addr)
	if err == nil && ok {
		err = d.Pending.Add(r)
	}
	switch {
	case err != nil:
		return fmt.Errorf("%w (and keeping the release for later failed: %v)", refused, err)
	case ok:
		d.Log.Warn("etcd is out of space: release kept, to apply once it has room", "pool", subnet, "address", addr, "record", r.Record.Describe(), "err", refused)
	}
	return nil
}
