package bridgesetup

import "fmt"

// RenderVLAN returns the files of the given kind that create the VLAN link
// at boot, up and without addresses (no DHCP, no IPv6 autoconfiguration:
// the host has no business on that segment, its containers do).
func RenderVLAN(kind string, v VLAN) ([]File, error) {
	v, err := v.check()
	if err != nil {
		return nil, err
	}
	hdr := fmt.Sprintf("# Written by ipamctl vlan setup: %s is VLAN %d of %s, without addresses, for macvlan/ipvlan networks.\n",
		v.Name, v.ID, v.NIC)
	switch kind {
	case Networkd:
		return renderVLANNetworkd(hdr, v), nil
	case Ifupdown:
		return []File{{Path: "/etc/network/interfaces.d/" + v.Name, Content: hdr + fmt.Sprintf(
			"auto %s\niface %s inet manual\n\tvlan-raw-device %s\n\tvlan-id %d\n", v.Name, v.Name, v.NIC, v.ID)}}, nil
	case Ifcfg:
		return []File{{Path: "/etc/sysconfig/network-scripts/ifcfg-" + v.Name, Content: hdr + fmt.Sprintf(
			"DEVICE=%s\nVLAN=yes\nPHYSDEV=%s\nVLAN_ID=%d\nONBOOT=yes\nBOOTPROTO=none\nIPV6INIT=no\n", v.Name, v.NIC, v.ID)}}, nil
	}
	return nil, unknownKind(kind)
}

// renderVLANNetworkd writes the netdev and network of the VLAN link, and
// the VLAN= line for the NIC as a drop-in of 10-NIC.network: the file
// `ipamctl bridge setup --persist` writes. networkd reads a drop-in only
// beside the .network file it uses for the NIC (`networkctl status NIC`
// names it), which is why ipamctl says to check.
func renderVLANNetworkd(hdr string, v VLAN) []File {
	dir := "/etc/systemd/network/"
	return []File{
		{Path: dir + "10-" + v.Name + ".netdev", Content: hdr + fmt.Sprintf("[NetDev]\nName=%s\nKind=vlan\n\n[VLAN]\nId=%d\n", v.Name, v.ID)},
		{Path: dir + "10-" + v.Name + ".network", Content: hdr + fmt.Sprintf(
			"[Match]\nName=%s\n\n[Network]\nLinkLocalAddressing=no\nIPv6AcceptRA=no\nConfigureWithoutCarrier=yes\n", v.Name)},
		{Path: dir + "10-" + v.NIC + ".network.d/vlan-" + v.Name + ".conf", Content: hdr + fmt.Sprintf("[Network]\nVLAN=%s\n", v.Name)},
	}
}
