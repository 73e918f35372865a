//go:build cuda

package main

import _ "github.com/mla-operator/mla-operator/worker/engine/cuda" // registers the "cuda" engine
