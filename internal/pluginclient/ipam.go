package pluginclient

import (
	"context"
	"fmt"
	"slices"
)

// The request and answer bodies of the remote IPAM protocol, as dockerd encodes them (field
// names are the JSON keys).

type ActivateResponse struct {
	Implements []string
}

type AddressSpacesResponse struct {
	LocalDefaultAddressSpace  string
	GlobalDefaultAddressSpace string
}

type RequestPoolRequest struct {
	AddressSpace string
	Pool         string
	SubPool      string
	Options      map[string]string
	V6           bool
}

type RequestPoolResponse struct {
	PoolID string
	Pool   string
	Data   map[string]string
}

type RequestAddressRequest struct {
	PoolID  string
	Address string
	Options map[string]string
}

type RequestAddressResponse struct {
	Address string // CIDR: the address with the pool's prefix length
	Data    map[string]string
}

type ReleaseAddressRequest struct {
	PoolID  string
	Address string
}

type ReleasePoolRequest struct {
	PoolID string
}

// Activate is dockerd's handshake; it fails unless the plugin implements IpamDriver.
func (c *Client) Activate(ctx context.Context) (ActivateResponse, error) {
	var res ActivateResponse
	if err := c.Call(ctx, "Plugin.Activate", nil, &res); err != nil {
		return res, err
	}
	if !slices.Contains(res.Implements, "IpamDriver") {
		return res, &CallError{Msg: fmt.Sprintf("plugin implements %q, not IpamDriver", res.Implements)}
	}
	return res, nil
}

// GetDefaultAddressSpaces is what dockerd asks right after Activate.
func (c *Client) GetDefaultAddressSpaces(ctx context.Context) (AddressSpacesResponse, error) {
	var res AddressSpacesResponse
	err := c.Call(ctx, "IpamDriver.GetDefaultAddressSpaces", nil, &res)
	return res, err
}

// RequestPool is `docker network create`'s call.
func (c *Client) RequestPool(ctx context.Context, req RequestPoolRequest) (RequestPoolResponse, error) {
	if req.Options == nil {
		req.Options = map[string]string{} // dockerd sends {} rather than null
	}
	var res RequestPoolResponse
	err := c.Call(ctx, "IpamDriver.RequestPool", req, &res)
	return res, err
}

// ReleasePool is `docker network rm`'s call.
func (c *Client) ReleasePool(ctx context.Context, poolID string) error {
	return c.Call(ctx, "IpamDriver.ReleasePool", ReleasePoolRequest{PoolID: poolID}, &struct{}{})
}

// RequestAddress asks for an address; an endpoint's request carries its MAC in Options[OptMAC].
func (c *Client) RequestAddress(ctx context.Context, req RequestAddressRequest) (RequestAddressResponse, error) {
	var res RequestAddressResponse
	err := c.Call(ctx, "IpamDriver.RequestAddress", req, &res)
	return res, err
}

// ReleaseAddress gives addr (without prefix length, as dockerd sends it) back.
func (c *Client) ReleaseAddress(ctx context.Context, poolID, addr string) error {
	return c.Call(ctx, "IpamDriver.ReleaseAddress", ReleaseAddressRequest{PoolID: poolID, Address: addr}, &struct{}{})
}
