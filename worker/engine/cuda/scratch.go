//go:build cuda

package cuda

import (
	"errors"
	"fmt"

	"gorgonia.org/cu"
)

// deviceBuffer is device memory that grows to the largest size asked for.
type deviceBuffer struct {
	ptr  cu.DevicePtr
	size int
}

func (b *deviceBuffer) ensure(n int) error {
	if n <= b.size {
		return nil
	}
	if err := b.release(); err != nil {
		return err
	}
	p, err := cu.MemAlloc(int64(n))
	if err != nil {
		return fmt.Errorf("cuda engine: allocating %d bytes: %w", n, err)
	}
	b.ptr, b.size = p, n
	return nil
}

func (b *deviceBuffer) release() error {
	if b.ptr == 0 {
		return nil
	}
	err := cu.MemFree(b.ptr)
	b.ptr, b.size = 0, 0
	if err != nil {
		return fmt.Errorf("cuda engine: freeing: %w", err)
	}
	return nil
}

// scratch holds one decode step's device buffers, reused across steps.
type scratch struct {
	q, table, lens, out, lse, sched, partialOut, partialLSE deviceBuffer
	// generation counts reallocations: device state kept in the buffers
	// (a computed schedule) is valid only within one generation.
	generation uint64
}

func (s *scratch) buffers() []*deviceBuffer {
	return []*deviceBuffer{&s.q, &s.table, &s.lens, &s.out, &s.lse, &s.sched, &s.partialOut, &s.partialLSE}
}

// ensure grows the buffers to the given byte sizes, in buffers() order.
func (s *scratch) ensure(sizes ...int) error {
	bufs := s.buffers()
	if len(sizes) != len(bufs) {
		return fmt.Errorf("cuda engine: %d scratch sizes for %d buffers", len(sizes), len(bufs))
	}
	for i, b := range bufs {
		if sizes[i] <= b.size {
			continue
		}
		s.generation++
		if err := b.ensure(sizes[i]); err != nil {
			return err
		}
	}
	return nil
}

func (s *scratch) free() error {
	s.generation++
	var errs []error
	for _, b := range s.buffers() {
		errs = append(errs, b.release())
	}
	return errors.Join(errs...)
}
