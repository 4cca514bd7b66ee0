package ratelimit

import (
	"fmt"
	"net/netip"
)

// Default client prefixes: an IPv4 address is one client; an IPv6
// subscriber usually owns a whole /64 (2^64 addresses), so keying single
// IPv6 addresses would give each subscriber an unlimited number of quotas.
const (
	DefaultIPv4Prefix = 32
	DefaultIPv6Prefix = 64
)

// IPPrefixes says how many leading bits of a client address identify one
// client. Zero values mean the defaults (32 and 64).
type IPPrefixes struct {
	V4 int
	V6 int
}

// Validate reports prefixes out of range.
func (p IPPrefixes) Validate() error {
	if p.V4 < 0 || p.V4 > 32 {
		return fmt.Errorf("ratelimit: ipv4_prefix must be 1-32, got %d", p.V4)
	}
	if p.V6 < 0 || p.V6 > 128 {
		return fmt.Errorf("ratelimit: ipv6_prefix must be 1-128, got %d", p.V6)
	}
	return nil
}

// ClientKey returns the key that stands for the client at ip: the address
// itself for a full-length prefix ("203.0.113.9"), otherwise its network
// in CIDR form ("2001:db8:1:2::/64"). An IPv4-mapped IPv6 address counts
// as IPv4, a zone is dropped. ok is false when ip is not an address; then
// ip is returned as it is.
func (p IPPrefixes) ClientKey(ip string) (key string, ok bool) {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return ip, false
	}
	if addr.Is4() && (p.V4 == 0 || p.V4 >= 32) {
		// ParseAddr takes only canonical dotted quads: the input is the
		// key, and the common case allocates nothing.
		return ip, true
	}
	addr = addr.WithZone("").Unmap()
	bits := p.V6
	if bits == 0 {
		bits = DefaultIPv6Prefix
	}
	full := 128
	if addr.Is4() {
		bits, full = p.V4, 32
		if bits == 0 {
			bits = DefaultIPv4Prefix
		}
	}
	if bits >= full {
		return addr.String(), true
	}
	pfx, err := addr.Prefix(bits)
	if err != nil {
		return addr.String(), true
	}
	return pfx.String(), true
}
