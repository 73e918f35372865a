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
