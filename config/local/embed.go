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
