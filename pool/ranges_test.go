package pool

import (
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"go4.org/netipx"
)

func TestParseSubnet(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "198.18.0.0/16", want: "198.18.0.0/16"},
		{in: " 2001:db8::/64 ", want: "2001:db8::/64"},
		{in: "198.18.1.2/16", err: `host bits set, did you mean 198.18.0.0/16?`},
		{in: "198.18.0.0", err: `invalid subnet "198.18.0.0"`},
		{in: "fe80::%eth0/64", err: "invalid subnet"},
		{in: "::ffff:198.18.0.0/112", err: "plain IPv4 form"},
		{in: "", err: `invalid subnet ""`},
	} {
		got, err := ParseSubnet(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSubnet(%q) error = %v, want it to contain %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("ParseSubnet(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestParseRange(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "198.18.0.10-198.18.0.20", want: "198.18.0.10-198.18.0.20"},
		{in: "198.18.0.0/30", want: "198.18.0.0-198.18.0.3"},
		{in: "198.18.0.7/30", err: "host bits set, did you mean 198.18.0.4/30?"},
		{in: "198.18.0.9", want: "198.18.0.9"},
		{in: "2001:db8::1-2001:db8::ff", want: "2001:db8::1-2001:db8::ff"},
		{in: "::/80", want: "::-::ffff:255.255.255.255"}, // found by FuzzParseRange: must round-trip
		{in: "198.18.0.9-198.18.0.1", err: `invalid range "198.18.0.9-198.18.0.1": start after end`},
		{in: "198.18.0.1-2001:db8::1", err: "different address families"},
		{in: "198.18.0.1-", err: "want A-B, CIDR or a single address"},
		{in: "banana", err: `invalid range "banana"`},
		{in: "198.18.0.0/33", err: "invalid range"},
	} {
		got, err := ParseRange(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseRange(%q) error = %v, want it to contain %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || FormatRange(got) != tc.want {
			t.Errorf("ParseRange(%q) = %s, %v; want %s", tc.in, FormatRange(got), err, tc.want)
		}
	}
}

func TestHostRangeAndCheckHostAddr(t *testing.T) {
	for _, tc := range []struct{ subnet, want string }{
		{"198.18.0.0/24", "198.18.0.1-198.18.0.254"},
		{"198.18.0.0/30", "198.18.0.1-198.18.0.2"},
		{"198.18.0.0/31", "198.18.0.0-198.18.0.1"},
		{"198.18.0.5/32", "198.18.0.5"},
		{"2001:db8::/120", "2001:db8::1-2001:db8::ff"},
		{"2001:db8::/64", "2001:db8::1-2001:db8::ffff:ffff:ffff:ffff"},
		{"2001:db8::/127", "2001:db8::-2001:db8::1"},
	} {
		if got := FormatRange(HostRange(netip.MustParsePrefix(tc.subnet))); got != tc.want {
			t.Errorf("HostRange(%s) = %s, want %s", tc.subnet, got, tc.want)
		}
	}
	for _, tc := range []struct{ subnet, addr, want string }{
		{"198.18.0.0/24", "198.18.0.1", ""},
		{"198.18.0.0/24", "198.18.0.0", "network address"},
		{"198.18.0.0/24", "198.18.0.255", "broadcast address"},
		{"198.18.0.0/24", "198.18.1.1", "outside subnet"},
		{"198.18.0.0/24", "2001:db8::1", "outside subnet"},
		// IPv6 has no broadcast: the last address is a host's.
		{"2001:db8:1::/64", "2001:db8:1::1", ""},
		{"2001:db8:1::/64", "2001:db8:1::ffff:ffff:ffff:ffff", ""},
		{"2001:db8:1::/64", "2001:db8:1::", "subnet-router anycast address"},
		{"2001:db8:1::/64", "2001:db8:2::1", "outside subnet"},
		{"2001:db8:1::/64", "198.18.0.1", "outside subnet"},
		{"2001:db8:1::/64", "::ffff:198.18.0.1", "outside subnet"},
	} {
		err := CheckHostAddr(netip.MustParsePrefix(tc.subnet), netip.MustParseAddr(tc.addr))
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CheckHostAddr(%s, %s) = %v, want %q", tc.subnet, tc.addr, err, tc.want)
		}
	}
}

func TestFirstBlockAndFormatCount(t *testing.T) {
	for _, tc := range []struct {
		subnet string
		n      uint64
		want   string
	}{
		{"2001:db8:1::/64", DefaultMaxAutoSeed, "2001:db8:1::/112"},
		{"2001:db8:1::/64", MaxPoolSize, "2001:db8:1::/107"},
		{"2001:db8:1::/64", 1000, "2001:db8:1::/119"}, // rounded down to a power of two
		{"2001:db8:1::/120", MaxPoolSize, "2001:db8:1::/120"},
		{"10.0.0.0/8", DefaultMaxAutoSeed, "10.0.0.0/16"},
	} {
		if got := firstBlock(netip.MustParsePrefix(tc.subnet), tc.n).String(); got != tc.want {
			t.Errorf("firstBlock(%s, %d) = %s, want %s", tc.subnet, tc.n, got, tc.want)
		}
	}
	for n, want := range map[uint64]string{
		65536:          "65536",
		1 << 32:        "4294967296",
		1<<32 + 1:      "more than 2^32",
		1 << 40:        "more than 2^39",
		math.MaxUint64: "more than 2^63",
	} {
		if got := FormatCount(n); got != want {
			t.Errorf("FormatCount(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestRangeSizeAndAddrAt(t *testing.T) {
	for _, tc := range []struct {
		r    string
		size uint64
	}{
		{"198.18.0.0-198.18.0.0", 1},
		{"198.18.0.0-198.18.255.255", 65536},
		{"0.0.0.0-255.255.255.255", 1 << 32},
		{"2001:db8::-2001:db8::ffff:ffff:ffff:ffff", math.MaxUint64},
		{"2001:db8::-2001:db9::", math.MaxUint64},
	} {
		r := netipx.MustParseIPRange(tc.r)
		if got := RangeSize(r); got != tc.size {
			t.Errorf("RangeSize(%s) = %d, want %d", tc.r, got, tc.size)
		}
		if got := AddrAt(r, 0); got != r.From() {
			t.Errorf("AddrAt(%s, 0) = %s", tc.r, got)
		}
		if tc.size < math.MaxUint64 {
			if got := AddrAt(r, tc.size-1); got != r.To() {
				t.Errorf("AddrAt(%s, size-1) = %s, want %s", tc.r, got, r.To())
			}
		}
	}
	if got := AddrAt(netipx.MustParseIPRange("2001:db8::ffff:ffff:ffff:ffff-2001:db8:0:1::1"), 1); got != netip.MustParseAddr("2001:db8:0:1::") {
		t.Errorf("AddrAt across the 64-bit boundary = %s", got)
	}
	if RangeSize(netipx.IPRange{}) != 0 {
		t.Error("zero range has a size")
	}
}

func TestNewNetwork(t *testing.T) {
	for _, tc := range []struct {
		subnet, ipRange, want, err string
	}{
		{subnet: "198.18.0.0/16", want: "198.18.0.1-198.18.255.254"},
		{subnet: "198.18.0.0/16", ipRange: "198.18.1.0/24", want: "198.18.1.0-198.18.1.255"},
		{subnet: "198.18.0.0/24", ipRange: "198.18.0.0/24", want: "198.18.0.1-198.18.0.254"},
		{subnet: "198.18.0.0/24", ipRange: "198.18.0.0/25", want: "198.18.0.1-198.18.0.127"},
		{subnet: "198.18.0.0/24", ipRange: "198.18.1.0/25", err: "not inside subnet"},
		{subnet: "198.18.0.0/24", ipRange: "198.18.0.0/16", err: "not inside subnet"},
		{subnet: "198.18.0.0/24", ipRange: "2001:db8::/64", err: "not inside subnet"},
		{subnet: "198.18.0.0/24", ipRange: "x", err: `invalid ip-range "x"`},
		{subnet: "198.18.0.0/24", ipRange: "198.18.0.255/32", err: "holds no usable address"},
		{subnet: "2001:db8:1::/64", want: "2001:db8:1::1-2001:db8:1:0:ffff:ffff:ffff:ffff"},
		{subnet: "2001:db8:1::/64", ipRange: "2001:db8:1::/112", want: "2001:db8:1::1-2001:db8:1::ffff"},
		{subnet: "2001:db8:1::/64", ipRange: "2001:db8:1::1:0/112", want: "2001:db8:1::1:0-2001:db8:1::1:ffff"},
		{subnet: "2001:db8:1::/64", ipRange: "198.18.0.0/24", err: "not inside subnet"},
		{subnet: "2001:db8:1::/64", ipRange: "2001:db8:2::/112", err: "not inside subnet"},
		{subnet: "2001:db8:1::/64", ipRange: "::ffff:198.18.0.0/120", err: "invalid ip-range"},
		{subnet: "2001:db8:1::/64", ipRange: "2001:db8:1::/128", err: "holds no usable address"},
		{subnet: "0.0.0.0/24", err: "picks no subnet for you"}, // dockerd 29: any /24 of the default pools
		{subnet: "::/64", err: "picks no subnet for you"},
	} {
		n, err := NewNetwork(tc.subnet, tc.ipRange)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("NewNetwork(%s, %s) error = %v, want %q", tc.subnet, tc.ipRange, err, tc.err)
			}
			continue
		}
		if err != nil || FormatRange(n.Range()) != tc.want {
			t.Errorf("NewNetwork(%s, %s).Range() = %s, %v; want %s", tc.subnet, tc.ipRange, FormatRange(n.Range()), err, tc.want)
		}
	}
}

// FuzzParseRange: no panic, and what parses prints back to the same range.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"198.18.0.1-198.18.0.9", "198.18.0.0/24", "2001:db8::/120", "1.2.3.4", "-", "1.2.3.4-", "::ffff:1.2.3.4",
		"2001:db8:1::/64", "2001:db8:1::1:0-2001:db8:1::1:ffff", "2001:db8::ffff:ffff:ffff:ffff-2001:db8:0:1::1", "::ffff:1.2.3.4-::ffff:1.2.3.9", "2001:db8::1%eth0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRange(s)
		if err != nil {
			if !strings.Contains(err.Error(), "invalid range") {
				t.Fatalf("ParseRange(%q) error %q does not say what is wrong", s, err)
			}
			return
		}
		if !r.IsValid() {
			t.Fatalf("ParseRange(%q) returned invalid range without error", s)
		}
		back, err := ParseRange(FormatRange(r))
		if err != nil || back != r {
			t.Fatalf("ParseRange(%q) = %v; round trip via %q gave %v, %v", s, r, FormatRange(r), back, err)
		}
		if RangeSize(r) == 0 || AddrAt(r, RangeSize(r)-1).Less(r.From()) {
			t.Fatalf("size or arithmetic broken for %v", r)
		}
	})
}

// FuzzParseRanges: the comma form always round-trips and normalises.
func FuzzParseRanges(f *testing.F) {
	f.Add("198.18.0.1-198.18.0.9,198.18.0.5-198.18.0.20,198.18.1.0/30")
	f.Add("2001:db8::1,2001:db8::2")
	f.Add("2001:db8:1::1:0/112,2001:db8:1::1:8000-2001:db8:1::2:5,198.18.0.1")
	f.Fuzz(func(t *testing.T, s string) {
		set, err := ParseRanges(s)
		if err != nil {
			return
		}
		again, err := ParseRanges(FormatRanges(set))
		if err != nil || !again.Equal(set) {
			t.Fatalf("ParseRanges(%q) does not round-trip via %q: %v", s, FormatRanges(set), err)
		}
	})
}

func TestChunks(t *testing.T) {
	var b netipx.IPSetBuilder
	b.AddRange(netipx.MustParseIPRange("198.18.0.1-198.18.0.7"))
	b.AddRange(netipx.MustParseIPRange("198.18.0.10-198.18.0.12"))
	b.AddRange(netipx.MustParseIPRange("2001:db8::fffe-2001:db8::1:1"))
	set, err := b.IPSet()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for c := range Chunks(set, 3) {
		got = append(got, c.String())
	}
	want := []string{"198.18.0.1-198.18.0.3", "198.18.0.4-198.18.0.6", "198.18.0.7-198.18.0.7", "198.18.0.10-198.18.0.12",
		"2001:db8::fffe-2001:db8::1:0", "2001:db8::1:1-2001:db8::1:1"}
	if !slices.Equal(got, want) {
		t.Errorf("Chunks(…, 3) = %q, want %q", got, want)
	}
	for c := range Chunks(set, 1<<20) {
		if c.String() != "198.18.0.1-198.18.0.7" {
			t.Errorf("first chunk of at most 2^20: %s", c)
		}
		break // stopping early is allowed
	}
}
