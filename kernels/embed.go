//go:build cuda

// Package kernels holds the CUDA sources of the MLA decode engine and the
// module compiled from them for sm_90a (hack/build-kernels.sh), embedded
// here so a worker binary carries its kernels.
package kernels

import _ "embed"

// MLADecode is the sm_90a cubin of mla_decode.cu; SOURCES.sha256 records
// the sources it was built from (checked by hack/verify-kernels.sh).
//
//go:embed mla_decode.cubin
var MLADecode []byte

// ParamsHeader is mla_decode_params.h, the kernels' parameter ABI, which the
// Go engine's cgo shim includes from this directory. Go's build cache does
// not track C headers outside a package's own directory, so a changed
// header once left a stale shim whose MlaDecodeParams no longer matched the
// kernels (garbage output, then an illegal address). Embedding the header
// here makes every change to it rebuild this package and, through the
// import, the engine's shim.
//
//go:embed mla_decode_params.h
var ParamsHeader string
