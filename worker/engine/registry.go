package engine

import (
	"fmt"
	"sort"
	"sync"
)

// Factory makes an engine. ordinal selects the GPU for device backends.
type Factory func(ordinal int) (Engine, error)

var (
	registryMu sync.Mutex
	registry   = map[string]Factory{}
)

// Register makes a backend available by name. Backends behind build tags
// (cuda) register from their package's init, so a binary has exactly the
// backends it was built with.
func Register(name string, f Factory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic(fmt.Sprintf("engine: backend %q registered twice", name))
	}
	registry[name] = f
}

// New makes the named backend.
func New(name string, ordinal int) (Engine, error) {
	registryMu.Lock()
	f, ok := registry[name]
	registryMu.Unlock()
	if !ok {
		return nil, fmt.Errorf("engine backend %q is not built into this binary (have %v)", name, Backends())
	}
	return f(ordinal)
}

// Backends lists the registered backends.
func Backends() []string {
	registryMu.Lock()
	defer registryMu.Unlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
