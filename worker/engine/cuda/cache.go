//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/mla-operator/mla-operator/worker/engine"
)

// Cache is a paged latent KV cache in device memory, laid out
// [layer][page][64][576] bf16 as the decode kernel reads it.
type Cache struct {
	e     *Engine
	shape engine.CacheShape
	ptr   cu.DevicePtr // 0 once closed; guarded by e.mu
	// kvMap is the tensor map over all layers' rows that the seesaw
	// kernel's bulk copies read (device memory, kvMapBytes).
	kvMap cu.DevicePtr
	// staging for WriteRows/ReadRows, guarded by e.mu
	rows, slots deviceBuffer
}

var _ engine.Cache = (*Cache)(nil)

const rowBytes = engine.RowDim * 2

// Shape implements engine.Cache.
func (c *Cache) Shape() engine.CacheShape { return c.shape }

func (c *Cache) layer(l int) cu.DevicePtr {
	return c.ptr + cu.DevicePtr(int64(c.layerRow0(l))*rowBytes)
}

// layerRow0 is the first row of layer l, in kvMap's rows.
func (c *Cache) layerRow0(l int) int { return l * c.shape.Pages * engine.PageSize }

func (c *Cache) checkRows(layer int, slots []int32, rows []uint16) error {
	if layer < 0 || layer >= c.shape.Layers {
		return fmt.Errorf("cuda cache: layer %d out of range [0, %d)", layer, c.shape.Layers)
	}
	if len(rows) != len(slots)*engine.RowDim {
		return fmt.Errorf("cuda cache: %d values for %d slots, want %d", len(rows), len(slots), len(slots)*engine.RowDim)
	}
	limit := int32(c.shape.Pages * engine.PageSize)
	for _, s := range slots {
		if s < 0 || s >= limit {
			return fmt.Errorf("cuda cache: slot %d out of range [0, %d)", s, limit)
		}
	}
	return nil
}

// WriteRows implements engine.Cache: stages rows and slots on the device
// and scatters them into the layer with one kernel.
func (c *Cache) WriteRows(layer int, slots []int32, rows []uint16) error {
	if err := c.checkRows(layer, slots, rows); err != nil {
		return err
	}
	if len(slots) == 0 {
		return nil
	}
	return c.e.do(func() error {
		if err := c.stage(len(slots)); err != nil {
			return err
		}
		if err := copyIn(c.rows.ptr, unsafe.Pointer(&rows[0]), len(rows)*2); err != nil {
			return err
		}
		if err := copyIn(c.slots.ptr, unsafe.Pointer(&slots[0]), len(slots)*4); err != nil {
			return err
		}
		p := makeRowCopyParams(c.layer(layer), c.rows.ptr, c.slots.ptr, len(slots))
		if err := launchRowCopy(c.e.fn.scatter, (len(slots)+7)/8, 256, c.e.stream, &p); err != nil {
			return fmt.Errorf("cuda cache: scatter: %w", err)
		}
		if err := cu.Synchronize(); err != nil {
			return fmt.Errorf("cuda cache: scatter: %w", err)
		}
		return nil
	})
}

// ReadRows implements engine.Cache.
func (c *Cache) ReadRows(layer int, slots []int32, rows []uint16) error {
	if err := c.checkRows(layer, slots, rows); err != nil {
		return err
	}
	if len(slots) == 0 {
		return nil
	}
	return c.e.do(func() error {
		if err := c.stage(len(slots)); err != nil {
			return err
		}
		if err := copyIn(c.slots.ptr, unsafe.Pointer(&slots[0]), len(slots)*4); err != nil {
			return err
		}
		p := makeRowCopyParams(c.layer(layer), c.rows.ptr, c.slots.ptr, len(slots))
		if err := launchRowCopy(c.e.fn.gather, (len(slots)+7)/8, 256, c.e.stream, &p); err != nil {
			return fmt.Errorf("cuda cache: gather: %w", err)
		}
		return copyOut(unsafe.Pointer(&rows[0]), c.rows.ptr, len(rows)*2)
	})
}

func (c *Cache) stage(n int) error {
	if c.ptr == 0 {
		return errors.New("cuda cache: closed")
	}
	if err := c.rows.ensure(n * rowBytes); err != nil {
		return err
	}
	return c.slots.ensure(n * 4)
}

// Close implements engine.Cache; closing twice is a no-op.
func (c *Cache) Close() error {
	return c.e.do(func() error {
		if c.ptr == 0 {
			return nil
		}
		err := errors.Join(c.rows.release(), c.slots.release())
		if ferr := cu.MemFree(c.ptr); ferr != nil {
			err = errors.Join(err, fmt.Errorf("cuda cache: freeing: %w", ferr))
		}
		if ferr := cu.MemFree(c.kvMap); ferr != nil {
			err = errors.Join(err, fmt.Errorf("cuda cache: freeing its tensor map: %w", ferr))
		}
		c.ptr, c.kvMap = 0, 0
		return err
	})
}
