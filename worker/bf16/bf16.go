// Package bf16 converts between float32 and bfloat16 bit patterns.
//
// bfloat16 is the upper half of an IEEE-754 binary32: same sign and 8-bit
// exponent, 7 stored mantissa bits. It is written by hand here because no
// well-kept Go library does bf16 (x448/float16 is IEEE binary16, a different
// format), and the conversion is a few lines that must match what GPUs do:
// round to nearest, ties to even, NaN stays NaN.
package bf16

import "math"

// FromFloat32 rounds f to the nearest bfloat16, ties to even. NaNs stay NaN
// (quieted, sign kept); values beyond the largest finite bfloat16 round to
// infinity, as the rounding rule says.
func FromFloat32(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fff_ffff > 0x7f80_0000 {
		// Truncating could clear every mantissa bit and turn the NaN into an
		// infinity; setting the quiet bit keeps it a NaN.
		return uint16(b>>16) | 0x0040
	}
	// Adding 0x7fff plus the lowest kept bit rounds the dropped half to
	// nearest and breaks ties towards an even kept mantissa.
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// ToFloat32 widens a bfloat16 exactly.
func ToFloat32(h uint16) float32 {
	return math.Float32frombits(uint32(h) << 16)
}

// FromFloat32s rounds src into dst; dst must be at least as long as src.
func FromFloat32s(dst []uint16, src []float32) {
	dst = dst[:len(src)]
	for i, f := range src {
		dst[i] = FromFloat32(f)
	}
}

// ToFloat32s widens src into dst; dst must be at least as long as src.
func ToFloat32s(dst []float32, src []uint16) {
	dst = dst[:len(src)]
	for i, h := range src {
		dst[i] = math.Float32frombits(uint32(h) << 16)
	}
}
