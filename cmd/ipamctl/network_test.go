package main

import (
	"encoding/json"
	"net/netip"
	"testing"
)

func TestNetworkSpecRendering(t *testing.T) {
	s := networkSpec{Name: "lan", Bridge: "br0", IPAMDriver: "talkingdata",
		Subnet: netip.MustParsePrefix("198.18.0.0/16"), IPRange: netip.MustParsePrefix("198.18.1.0/24"),
		Gateway: netip.MustParseAddr("198.18.0.11"), Router: netip.MustParseAddr("198.18.0.1")}
	want := "docker network create -d bridge --ipam-driver talkingdata --subnet 198.18.0.0/16 --ip-range 198.18.1.0/24" +
		" --gateway 198.18.0.11 --aux-address DefaultGatewayIPv4=198.18.0.1 -o com.docker.network.bridge.name=br0" +
		" -o com.docker.network.bridge.enable_ip_masquerade=false lan"
	if got := s.command(); got != want {
		t.Fatalf("command:\n got %s\nwant %s", got, want)
	}
	body, _ := json.Marshal(s.request())
	const wantBody = `{"CheckDuplicate":true,"Driver":"bridge","IPAM":{"Config":[{"AuxiliaryAddresses":{"DefaultGatewayIPv4":"198.18.0.1"},"Gateway":"198.18.0.11","IPRange":"198.18.1.0/24","Subnet":"198.18.0.0/16"}],"Driver":"talkingdata"},"Name":"lan","Options":{"com.docker.network.bridge.enable_ip_masquerade":"false","com.docker.network.bridge.name":"br0"}}`
	if string(body) != wantBody {
		t.Fatalf("API body:\n got %s\nwant %s", body, wantBody)
	}
}
