// Package dockerapi is how ipamctl reaches dockerd: Docker's own Go client, set up from the
// same environment as the docker CLI, so whatever DOCKER_HOST works for `docker` works here.
//
//   - unix:///path and tcp://host:port, with TLS from DOCKER_CERT_PATH (ca.pem, cert.pem,
//     key.pem) and DOCKER_TLS_VERIFY; DOCKER_TLS_VERIFY alone means the certificates in the
//     docker CLI's configuration directory, as for the CLI.
//   - ssh://[user@]host[:port], through the docker CLI's connection helper, which runs
//     `ssh … docker system dial-stdio` (the remote host needs the docker CLI).
//   - The API version is negotiated with the daemon on the first call (dockerd 20.10 speaks
//     1.41, 29 speaks 1.52), unless DOCKER_API_VERSION pins it.
//
// Docker contexts (DOCKER_CONTEXT, `docker context use`) are the CLI's own store and are not
// read: give their endpoint as the host.
package dockerapi

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/docker/cli/cli/connhelper"
	"github.com/moby/moby/client"
)

// Timeout bounds each call of a Client (all of its requests together).
const Timeout = time.Minute

// DefaultHost is dockerd's socket when DOCKER_HOST is unset.
const DefaultHost = client.DefaultDockerHost

// Client is a connection to one dockerd.
type Client struct {
	api  *client.Client
	host string
}

// New makes a client for host, a DOCKER_HOST value. It does not connect: an unreachable
// daemon shows up as the first call's error.
func New(host string) (*Client, error) {
	// Version negotiation is the client's default; only DOCKER_API_VERSION turns it off.
	opts := []client.Opt{client.WithAPIVersionFromEnv()}
	helper, err := connhelper.GetConnectionHelper(host)
	if err != nil {
		return nil, fmt.Errorf("docker host %q: %w", host, err)
	}
	if helper != nil {
		// As in the docker CLI, TLS settings do not apply: ssh is the transport.
		opts = append(opts,
			client.WithHTTPClient(&http.Client{Transport: &http.Transport{DialContext: helper.Dialer}}),
			client.WithHost(helper.Host), client.WithDialContext(helper.Dialer))
	} else {
		// TLS first: from the environment it replaces the transport WithHost then sets up.
		opts = append(opts, tlsFromEnv(), client.WithHost(host))
	}
	api, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker host %q: %w", host, err)
	}
	return &Client{api: api, host: host}, nil
}

// tlsFromEnv reads TLS settings as the docker CLI does: DOCKER_TLS_VERIFY verifies the
// daemon with ca.pem from DOCKER_CERT_PATH, else from the CLI's configuration directory;
// DOCKER_CERT_PATH alone encrypts without verifying the daemon.
func tlsFromEnv() client.Opt {
	if os.Getenv(client.EnvTLSVerify) == "" {
		return client.WithTLSClientConfigFromEnv()
	}
	dir := os.Getenv(client.EnvOverrideCertPath)
	if dir == "" {
		dir = cliConfigDir()
	}
	return client.WithTLSClientConfig(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
}

// cliConfigDir is the docker CLI's configuration directory: $DOCKER_CONFIG, else ~/.docker.
func cliConfigDir() string {
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".docker")
}

// Close ends the client's connections (and, over ssh, its ssh process).
func (c *Client) Close() error { return c.api.Close() }

// Host is the DOCKER_HOST value the client was made for.
func (c *Client) Host() string { return c.host }

// ServerVersion returns the daemon's version and the API version the client negotiated.
func (c *Client) ServerVersion(ctx context.Context) (server, api string, err error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	v, err := c.api.ServerVersion(ctx, client.ServerVersionOptions{})
	if err != nil {
		return "", "", c.failed("asking for its version", err)
	}
	return v.Version, c.api.ClientVersion(), nil
}

// failed says what was being done, and where.
func (c *Client) failed(doing string, err error) error {
	return fmt.Errorf("%s: calling the Docker API at %s: %w", doing, c.host, err)
}

// ShortID is the 12-character form of a Docker id, as docker ps shows it.
func ShortID(id string) string { return id[:min(len(id), 12)] }
