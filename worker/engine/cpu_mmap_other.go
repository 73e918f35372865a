//go:build !linux

package engine

// mapHost allocates from the Go heap where sparse anonymous mappings are not
// available; the cache then costs its full size.
func mapHost(size int) ([]byte, error) { return make([]byte, size), nil }

func unmapHost([]byte) error { return nil }
