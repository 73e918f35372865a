package clusterconfig

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
)

// PodCIDRs lays out the loopback addresses of one local cluster. Every pod IP
// is a 127.0.0.0/8 address, so a worker binds its pod's own IP and anything
// that dials a pod IP reaches the real process; nothing leaves the machine.
//
// A cluster owns 127.<Base>.0.0 through 127.<Base+k>.255.255: the first /24
// goes to kwok for ordinary pods, node i gets the (i+1)-th /24 for its worker
// pods. Picking Base at random lets `make run` and the e2e tests run side by
// side without their pod IPs colliding.
type PodCIDRs struct {
	// Base is the second octet of the cluster's first address.
	Base uint8
}

// MaxNodes is how many nodes one layout has room for.
const MaxNodes = 64*256 - 1

// RandomPodCIDRs picks a base in [16, 176), leaving the range below to
// addresses people commonly use (127.0.0.1, 127.0.1.1 and friends).
func RandomPodCIDRs() PodCIDRs { return PodCIDRs{Base: uint8(16 + rand.IntN(160))} }

// Kwok is the range kwok hands out to pods that are not workers.
func (p PodCIDRs) Kwok() netip.Prefix { return p.block(0) }

// ForNode is node i's range for worker pods.
func (p PodCIDRs) ForNode(i int) (netip.Prefix, error) {
	if i < 0 || i >= MaxNodes {
		return netip.Prefix{}, fmt.Errorf("node index %d out of range: a local cluster holds at most %d nodes", i, MaxNodes)
	}
	return p.block(i + 1), nil
}

func (p PodCIDRs) block(i int) netip.Prefix {
	second := int(p.Base) + i/256
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{127, byte(second), byte(i % 256), 0}), 24)
}
