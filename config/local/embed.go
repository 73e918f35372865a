// Package local holds the default configuration of the local simulated GPU
// cluster (`make run`, test/e2e), embedded so the binaries need no checkout.
package local

import _ "embed"

// ClusterYAML is the default node inventory (cluster.yaml).
//
//go:embed cluster.yaml
var ClusterYAML []byte

// KwokYAML is kwok's configuration and pod stages (kwok.yaml).
//
//go:embed kwok.yaml
var KwokYAML []byte

// KwokAllPodsYAML is kwok.yaml without the worker exclusion
// (kwok-all-pods.yaml): kwok runs every pod, for the scale benchmark.
//
//go:embed kwok-all-pods.yaml
var KwokAllPodsYAML []byte
