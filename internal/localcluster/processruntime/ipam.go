package processruntime

import (
	"fmt"
	"net/netip"
	"sync"
)

// HostIP is every simulated node's address.
const HostIP = "127.0.0.1"

// ipam hands out pod IPs from each node's pod CIDR, like a CNI's host-local
// IPAM: the lowest free address, skipping the network and broadcast
// addresses. A pod keeps its address across container restarts.
type ipam struct {
	mu    sync.Mutex
	inUse map[netip.Addr]string // address -> pod UID
}

func newIPAM() *ipam { return &ipam{inUse: map[netip.Addr]string{}} }

// Assign returns uid's address in cidr, taking a new one if it has none.
func (a *ipam) Assign(cidr, uid string) (string, error) {
	prefix, err := netip.ParsePrefix(cidr)
	if err != nil {
		return "", fmt.Errorf("node pod CIDR %q: %w", cidr, err)
	}
	if !prefix.Addr().Is4() || !prefix.Addr().IsLoopback() {
		return "", fmt.Errorf("node pod CIDR %s is not an IPv4 loopback range", cidr)
	}
	prefix = prefix.Masked()
	a.mu.Lock()
	defer a.mu.Unlock()
	for addr, owner := range a.inUse {
		if owner == uid && prefix.Contains(addr) {
			return addr.String(), nil
		}
	}
	for addr := prefix.Addr().Next(); prefix.Contains(addr.Next()); addr = addr.Next() {
		if _, taken := a.inUse[addr]; !taken {
			a.inUse[addr] = uid
			return addr.String(), nil
		}
	}
	return "", fmt.Errorf("pod CIDR %s is exhausted", cidr)
}

// Reserve records an address a pod already has (from its status).
func (a *ipam) Reserve(ip, uid string) {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.inUse[addr] = uid
}

// Release frees uid's addresses.
func (a *ipam) Release(uid string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for addr, owner := range a.inUse {
		if owner == uid {
			delete(a.inUse, addr)
		}
	}
}
