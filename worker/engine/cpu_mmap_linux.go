//go:build linux

package engine

import "golang.org/x/sys/unix"

// mapHost maps size bytes of private anonymous memory with MAP_NORESERVE:
// the kernel backs pages only when they are touched, and under its
// heuristic overcommit it would refuse a single mapping larger than RAM
// without the flag.
func mapHost(size int) ([]byte, error) {
	return unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
}

func unmapHost(mem []byte) error { return unix.Munmap(mem) }
