package bridgesetup

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The kinds of files that make the bridge survive a reboot.
const (
	Networkd = "systemd-networkd" // /etc/systemd/network: .netdev and two .network files
	Ifupdown = "ifupdown"         // Debian's /etc/network/interfaces.d/BRIDGE
	Ifcfg    = "ifcfg"            // Red Hat's /etc/sysconfig/network-scripts/ifcfg-*, route-*
)

// PersistKinds lists the kinds Render knows.
func PersistKinds() []string { return []string{Networkd, Ifupdown, Ifcfg} }

// File is a configuration file to write.
type File struct {
	Path    string // absolute, as on the target system
	Content string
}

// Render returns the files of the given kind that configure l at boot:
// the bridge with the NIC's MAC, the NIC as its port and nothing else,
// and the addresses and routes on the bridge.
func Render(kind string, l Layout) ([]File, error) {
	if l.Bridge == "" || l.NIC == "" {
		return nil, errors.New("bridgesetup: layout without bridge or NIC name")
	}
	switch kind {
	case Networkd:
		return renderNetworkd(l), nil
	case Ifupdown:
		return renderIfupdown(l), nil
	case Ifcfg:
		return renderIfcfg(l), nil
	}
	return nil, unknownKind(kind)
}

func unknownKind(kind string) error {
	return fmt.Errorf("bridgesetup: unknown kind of persistent configuration %q: want one of %s",
		kind, strings.Join(PersistKinds(), ", "))
}

func header(l Layout) string {
	return fmt.Sprintf("# Written by ipamctl bridge setup: %s bridges %s, with its MAC and addresses.\n", l.Bridge, l.NIC)
}

// customMTU reports whether l's MTU needs writing.
func customMTU(l Layout) bool { return l.MTU != 0 && l.MTU != 1500 }

// gateways splits l's routes into the plain default route of each family,
// which formats write as a "gateway" key, and the rest.
func gateways(l Layout) (gw4, gw6 Route, rest []Route) {
	for _, r := range l.Routes {
		switch {
		case r.plain() && r.Gw.Is4() && !gw4.Gw.IsValid():
			gw4 = r
		case r.plain() && r.Gw.Is6() && !gw6.Gw.IsValid():
			gw6 = r
		default:
			rest = append(rest, r)
		}
	}
	return gw4, gw6, rest
}

// ipRoute renders r as arguments of `ip route add`.
func ipRoute(r Route, dev string) string {
	var b strings.Builder
	if r.isDefault() {
		b.WriteString("default")
	} else {
		b.WriteString(r.Dst.String())
	}
	if r.Gw.IsValid() {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	fmt.Fprintf(&b, " dev %s", dev)
	if r.Src.IsValid() {
		fmt.Fprintf(&b, " src %s", r.Src)
	}
	if r.Metric != 0 {
		fmt.Fprintf(&b, " metric %d", r.Metric)
	}
	if r.Table != 0 {
		fmt.Fprintf(&b, " table %d", r.Table)
	}
	return b.String()
}

// renderNetworkd writes 10-* files: systemd-networkd applies the first
// .network file that matches a link, in lexical order, so these win over
// a distribution's or cloud-init's catch-all for the NIC.
func renderNetworkd(l Layout) []File {
	dir := "/etc/systemd/network/"
	var netdev strings.Builder
	netdev.WriteString(header(l))
	fmt.Fprintf(&netdev, "[NetDev]\nName=%s\nKind=bridge\n", l.Bridge)
	if len(l.MAC) > 0 {
		fmt.Fprintf(&netdev, "MACAddress=%s\n", l.MAC)
	}
	if customMTU(l) {
		fmt.Fprintf(&netdev, "MTUBytes=%d\n", l.MTU)
	}

	port := header(l) + fmt.Sprintf("[Match]\nName=%s\n\n[Network]\nBridge=%s\n", l.NIC, l.Bridge)

	var br strings.Builder
	br.WriteString(header(l))
	fmt.Fprintf(&br, "[Match]\nName=%s\n", l.Bridge)
	if len(l.MAC) > 0 {
		fmt.Fprintf(&br, "\n[Link]\nMACAddress=%s\n", l.MAC)
	}
	br.WriteString("\n[Network]\n")
	for _, a := range l.Addrs {
		fmt.Fprintf(&br, "Address=%s\n", a)
	}
	gw4, gw6, rest := gateways(l)
	for _, gw := range []Route{gw4, gw6} {
		if gw.Gw.IsValid() {
			fmt.Fprintf(&br, "Gateway=%s\n", gw.Gw)
		}
	}
	for _, r := range rest {
		br.WriteString("\n[Route]\n")
		if !r.isDefault() {
			fmt.Fprintf(&br, "Destination=%s\n", r.Dst)
		}
		if r.Gw.IsValid() {
			fmt.Fprintf(&br, "Gateway=%s\n", r.Gw)
		} else {
			br.WriteString("Scope=link\n")
		}
		if r.Src.IsValid() {
			fmt.Fprintf(&br, "PreferredSource=%s\n", r.Src)
		}
		if r.Metric != 0 {
			fmt.Fprintf(&br, "Metric=%d\n", r.Metric)
		}
		if r.Table != 0 {
			fmt.Fprintf(&br, "Table=%d\n", r.Table)
		}
	}
	return []File{
		{Path: dir + "10-" + l.Bridge + ".netdev", Content: netdev.String()},
		{Path: dir + "10-" + l.NIC + ".network", Content: port},
		{Path: dir + "10-" + l.Bridge + ".network", Content: br.String()},
	}
}

// renderIfupdown writes one stanza per address (classic ifupdown takes
// one address per stanza), the bridge's options in the first, the plain
// default route of a family as the "gateway" of its first stanza and the
// other routes as "up" commands of the last, when every address is there.
func renderIfupdown(l Layout) []File {
	type stanza struct {
		family string // inet, inet6
		lines  []string
	}
	var stanzas []stanza
	gw4, gw6, rest := gateways(l)
	seen := map[string]bool{}
	for _, a := range l.Addrs {
		s := stanza{family: "inet"}
		gw := gw4
		if a.Addr().Is6() {
			s.family, gw = "inet6", gw6
		}
		s.lines = append(s.lines, "address "+a.String())
		if !seen[s.family] && gw.Gw.IsValid() {
			s.lines = append(s.lines, "gateway "+gw.Gw.String())
		}
		seen[s.family] = true
		stanzas = append(stanzas, s)
	}
	if len(stanzas) == 0 {
		stanzas = []stanza{{family: "inet"}}
	}
	bridge := []string{"bridge_ports " + l.NIC, "bridge_stp off", "bridge_fd 0"}
	if len(l.MAC) > 0 {
		bridge = append(bridge, "hwaddress "+l.MAC.String())
	}
	if customMTU(l) {
		bridge = append(bridge, fmt.Sprintf("mtu %d", l.MTU))
	}
	stanzas[0].lines = append(bridge, stanzas[0].lines...)
	last := &stanzas[len(stanzas)-1]
	for _, r := range rest {
		ip := "ip"
		if r.Dst.Addr().Is6() {
			ip = "ip -6"
		}
		last.lines = append(last.lines, fmt.Sprintf("up %s route replace %s", ip, ipRoute(r, l.Bridge)))
	}

	var b strings.Builder
	b.WriteString(header(l))
	fmt.Fprintf(&b, "auto %s\n", l.Bridge)
	for i, s := range stanzas {
		method := "static"
		if len(l.Addrs) == 0 {
			method = "manual"
		}
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "iface %s %s %s\n", l.Bridge, s.family, method)
		for _, line := range s.lines {
			fmt.Fprintf(&b, "\t%s\n", line)
		}
	}
	fmt.Fprintf(&b, "\niface %s inet manual\n", l.NIC)
	return []File{{Path: "/etc/network/interfaces.d/" + l.Bridge, Content: b.String()}}
}

// renderIfcfg writes the classic CentOS pair, ifcfg-BRIDGE and
// ifcfg-NIC with BRIDGE=, and route-BRIDGE / route6-BRIDGE (`ip route`
// arguments, one route a line) when there are routes besides the plain
// default ones.
func renderIfcfg(l Layout) []File {
	dir := "/etc/sysconfig/network-scripts/"
	gw4, gw6, rest := gateways(l)

	var br strings.Builder
	br.WriteString(header(l))
	fmt.Fprintf(&br, "DEVICE=%s\nTYPE=Bridge\nONBOOT=yes\nBOOTPROTO=none\n", l.Bridge)
	if len(l.MAC) > 0 {
		fmt.Fprintf(&br, "MACADDR=%s\n", l.MAC)
	}
	br.WriteString("STP=no\nDELAY=0\n")
	if customMTU(l) {
		fmt.Fprintf(&br, "MTU=%d\n", l.MTU)
	}
	var v4 int
	var v6 []string
	for _, a := range l.Addrs {
		if a.Addr().Is6() {
			v6 = append(v6, a.String())
			continue
		}
		suffix := ""
		if v4 > 0 {
			suffix = fmt.Sprint(v4)
		}
		fmt.Fprintf(&br, "IPADDR%s=%s\nPREFIX%s=%d\n", suffix, a.Addr(), suffix, a.Bits())
		v4++
	}
	if gw4.Gw.IsValid() {
		fmt.Fprintf(&br, "GATEWAY=%s\n", gw4.Gw)
	}
	if len(v6) > 0 || gw6.Gw.IsValid() {
		br.WriteString("IPV6INIT=yes\n")
	}
	if len(v6) > 0 {
		fmt.Fprintf(&br, "IPV6ADDR=%s\n", v6[0])
	}
	if len(v6) > 1 {
		fmt.Fprintf(&br, "IPV6ADDR_SECONDARIES=%q\n", strings.Join(v6[1:], " "))
	}
	if gw6.Gw.IsValid() {
		fmt.Fprintf(&br, "IPV6_DEFAULTGW=%s\n", gw6.Gw)
	}

	var port strings.Builder
	port.WriteString(header(l))
	fmt.Fprintf(&port, "DEVICE=%s\nTYPE=Ethernet\nONBOOT=yes\nBOOTPROTO=none\n", l.NIC)
	if len(l.MAC) > 0 {
		fmt.Fprintf(&port, "HWADDR=%s\n", l.MAC)
	}
	fmt.Fprintf(&port, "BRIDGE=%s\n", l.Bridge)
	if customMTU(l) {
		fmt.Fprintf(&port, "MTU=%d\n", l.MTU)
	}

	files := []File{
		{Path: dir + "ifcfg-" + l.Bridge, Content: br.String()},
		{Path: dir + "ifcfg-" + l.NIC, Content: port.String()},
	}
	var r4, r6 strings.Builder
	for _, r := range rest {
		if r.Dst.Addr().Is6() {
			fmt.Fprintln(&r6, ipRoute(r, l.Bridge))
		} else {
			fmt.Fprintln(&r4, ipRoute(r, l.Bridge))
		}
	}
	if r4.Len() > 0 {
		files = append(files, File{Path: dir + "route-" + l.Bridge, Content: header(l) + r4.String()})
	}
	if r6.Len() > 0 {
		files = append(files, File{Path: dir + "route6-" + l.Bridge, Content: header(l) + r6.String()})
	}
	return files
}

// Written is what WriteFiles did with one file.
type Written struct {
	Path      string // where, under the root
	Unchanged bool   // it was there already, with this content
	Backup    string // where the different file it replaced was kept, if any
}

// WriteFiles writes the files under root ("/" for the running system):
// each one atomically (a temporary file renamed over it), creating
// directories as needed. A different file in the way is kept as
// PATH.bak, a suffix that initscripts, NetworkManager, networkd and
// ifupdown's source-directory all skip; an older .bak is left alone, so
// it keeps the original.
func WriteFiles(root string, files []File) ([]Written, error) {
	var done []Written
	for _, f := range files {
		w, err := writeFile(filepath.Join(root, f.Path), []byte(f.Content))
		if err != nil {
			return done, fmt.Errorf("bridgesetup: writing %s: %w", filepath.Join(root, f.Path), err)
		}
		done = append(done, w)
	}
	return done, nil
}

func writeFile(path string, content []byte) (Written, error) {
	w := Written{Path: path}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return w, err
	}
	old, err := os.ReadFile(path)
	switch {
	case err == nil && bytes.Equal(old, content):
		w.Unchanged = true
		return w, nil
	case err == nil:
		bak := path + ".bak"
		if _, err := os.Lstat(bak); errors.Is(err, fs.ErrNotExist) {
			if err := os.WriteFile(bak, old, 0o644); err != nil {
				return w, err
			}
			w.Backup = bak
		}
	case !errors.Is(err, fs.ErrNotExist):
		return w, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return w, err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return w, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return w, err
	}
	if err := tmp.Close(); err != nil {
		return w, err
	}
	return w, os.Rename(tmp.Name(), path)
}
