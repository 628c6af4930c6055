package dockerapi

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/moby/moby/client/pkg/versions"

	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/testpki"
)

// tlsPort is dockerd's TLS listener inside its own network namespace, so any port will do.
const tlsPort = "127.0.0.1:2376"

// TestDaemon: against a real dockerd of each engine of the matrix, the client reaches it over
// unix:// and over tcp:// with TLS, configured as the docker CLI is (DOCKER_CERT_PATH,
// DOCKER_TLS_VERIFY), negotiates the API version, creates a network (refusing a taken name)
// and sees a container's address in use. Without the certificates, or with a CA that did not
// sign the daemon's, TLS fails.
func TestDaemon(t *testing.T) {
	for _, e := range dockertest.MatrixEngines(t) {
		t.Run(e.Name, func(t *testing.T) {
			pki := certs(t)
			d := dockertest.Start(t, dockertest.Options{Engine: e, Args: []string{
				"--tlsverify", "--tlscacert", filepath.Join(pki, "ca.pem"),
				"--tlscert", filepath.Join(pki, "server.pem"), "--tlskey", filepath.Join(pki, "server-key.pem"),
				"-H", "tcp://" + tlsPort,
			}})
			tcp := "tcp://" + d.Expose(t, tlsPort)

			t.Run("unix", func(t *testing.T) {
				t.Setenv("DOCKER_CERT_PATH", "")
				t.Setenv("DOCKER_TLS_VERIFY", "")
				exercise(t, d, d.Host(), "198.18.10")
			})
			t.Run("tls", func(t *testing.T) {
				t.Setenv("DOCKER_CERT_PATH", filepath.Join(pki, "client"))
				t.Setenv("DOCKER_TLS_VERIFY", "1")
				exercise(t, d, tcp, "198.18.11")
			})
			t.Run("tls refused", func(t *testing.T) {
				for _, c := range []struct{ name, certPath, want string }{
					{"no TLS", "", "calling the Docker API at " + tcp},
					{"another CA", filepath.Join(pki, "other"), "certificate signed by unknown authority"},
				} {
					t.Setenv("DOCKER_CERT_PATH", c.certPath)
					t.Setenv("DOCKER_TLS_VERIFY", map[bool]string{true: "1"}[c.certPath != ""])
					cl, err := New(tcp)
					if err == nil {
						_, _, err = cl.ServerVersion(context.Background())
						cl.Close()
					}
					if err == nil || !strings.Contains(err.Error(), c.want) {
						t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
					}
				}
			})
		})
	}
}

// exercise runs the client's calls against d through host, on a network in prefix.0/24.
func exercise(t *testing.T, d *dockertest.Daemon, host, prefix string) {
	ctx := context.Background()
	c, err := New(host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	server, api, err := c.ServerVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Unnegotiated, the client would send its own newest version, which older daemons refuse.
	if want := d.Engine().APIVersion; versions.LessThan(api, want) || versions.GreaterThan(api, client.MaxAPIVersion) {
		t.Errorf("negotiated API %s with dockerd %s (engine %s speaks %s)", api, server, d.Engine().Name, want)
	}

	name := "net" + strings.ReplaceAll(prefix, ".", "-")
	opts := client.NetworkCreateOptions{Driver: "bridge", IPAM: &network.IPAM{Config: []network.IPAMConfig{{
		Subnet: netip.MustParsePrefix(prefix + ".0/24"), Gateway: netip.MustParseAddr(prefix + ".1")}}}}
	id, err := c.CreateNetwork(ctx, name, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Docker("network", "rm", id) })
	// A second network of the name, on another subnet the daemon would otherwise take.
	opts.IPAM.Config[0].Subnet, opts.IPAM.Config[0].Gateway = netip.MustParsePrefix(prefix+"0.0/24"), netip.Addr{}
	if _, err := c.CreateNetwork(ctx, name, opts); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second network %s: %v, want it refused", name, err)
	}
	if ids := d.MustDocker(t, "network", "ls", "-q", "--filter", "name=^"+name+"$"); ids != ShortID(id) {
		t.Errorf("networks named %s: %q, want only %s", name, ids, ShortID(id))
	}

	addr := netip.MustParseAddr(prefix + ".9")
	ctr := d.MustDocker(t, "run", "-d", "--init", "--network", name, "--ip", addr.String(), d.ImportBusybox(t), "sleep", "300")
	t.Cleanup(func() { d.Docker("rm", "-f", ctr) })
	live, err := c.InUse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if who := live[addr]; !strings.Contains(who, ShortID(ctr)) {
		t.Errorf("InUse: %s is had by %q, want container %s; all: %v", addr, who, ShortID(ctr), live)
	}
}

// certs makes a CA, a server certificate for 127.0.0.1 and, in client/ and other/, the three
// files DOCKER_CERT_PATH names: other/ has a CA that did not sign the server's.
func certs(t *testing.T) string {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "dockerapi test CA")
	ca.WriteCert(t, dir, "ca")
	ca.Issue(t, dir, "server", "127.0.0.1", true)
	for sub, signer := range map[string]*testpki.CA{"client": ca, "other": testpki.NewCA(t, "unrelated CA")} {
		p := filepath.Join(dir, sub)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		signer.WriteCert(t, p, "ca")
		signer.Issue(t, p, "cert", "ipamctl", false)
		if err := os.Rename(filepath.Join(p, "cert-key.pem"), filepath.Join(p, "key.pem")); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
