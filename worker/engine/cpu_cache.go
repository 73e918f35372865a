package engine

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// hostCache is a paged latent cache in host memory. Its storage is a sparse
// anonymous mapping (see mapHost), so a cache sized like an 80 GB GPU costs
// only the pages that sequences have written.
type hostCache struct {
	shape  CacheShape
	mem    []byte   // the mapping; released by Close
	rows   []uint16 // mem viewed as bf16, [layer][page][PageSize][RowDim]
	closed atomic.Bool
}

func newHostCache(shape CacheShape) (*hostCache, error) {
	if shape.Layers < 1 || shape.Pages < 1 {
		return nil, fmt.Errorf("cache needs at least one layer and one page, got %d layers and %d pages", shape.Layers, shape.Pages)
	}
	size := shape.Bytes()
	if size/int64(shape.Layers)/int64(shape.Pages) != PageSize*RowDim*2 || int64(int(size)) != size {
		return nil, fmt.Errorf("cache of %d layers x %d pages overflows the address space", shape.Layers, shape.Pages)
	}
	mem, err := mapHost(int(size))
	if err != nil {
		return nil, fmt.Errorf("mapping %d bytes for a cache of %d layers x %d pages: %w", size, shape.Layers, shape.Pages, err)
	}
	return &hostCache{
		shape: shape,
		mem:   mem,
		rows:  unsafe.Slice((*uint16)(unsafe.Pointer(unsafe.SliceData(mem))), len(mem)/2),
	}, nil
}

func (c *hostCache) Shape() CacheShape { return c.shape }

// row is the storage of one slot of one layer.
func (c *hostCache) row(layer int, slot int32) []uint16 {
	i := (layer*c.shape.Pages*PageSize + int(slot)) * RowDim
	return c.rows[i : i+RowDim : i+RowDim]
}

func (c *hostCache) checkRows(layer int, slots []int32, rows []uint16) error {
	if c.closed.Load() {
		return fmt.Errorf("cache is closed")
	}
	if layer < 0 || layer >= c.shape.Layers {
		return fmt.Errorf("layer %d out of range [0, %d)", layer, c.shape.Layers)
	}
	if len(rows) != len(slots)*RowDim {
		return fmt.Errorf("%d slots need %d values, got %d", len(slots), len(slots)*RowDim, len(rows))
	}
	limit := int32(c.shape.Pages * PageSize)
	for _, s := range slots {
		if s < 0 || s >= limit {
			return fmt.Errorf("slot %d out of range [0, %d)", s, limit)
		}
	}
	return nil
}

func (c *hostCache) WriteRows(layer int, slots []int32, rows []uint16) error {
	if err := c.checkRows(layer, slots, rows); err != nil {
		return err
	}
	for i, s := range slots {
		copy(c.row(layer, s), rows[i*RowDim:(i+1)*RowDim])
	}
	return nil
}

func (c *hostCache) ReadRows(layer int, slots []int32, rows []uint16) error {
	if err := c.checkRows(layer, slots, rows); err != nil {
		return err
	}
	for i, s := range slots {
		copy(rows[i*RowDim:(i+1)*RowDim], c.row(layer, s))
	}
	return nil
}

func (c *hostCache) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	mem := c.mem
	c.mem, c.rows = nil, nil
	return unmapHost(mem)
}
