package bf16

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestFromFloat32(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   float32
		want uint16
	}{
		{"one", 1, 0x3f80},
		{"minus two", -2, 0xc000},
		{"positive zero", 0, 0x0000},
		{"negative zero", float32(math.Copysign(0, -1)), 0x8000},
		{"infinity", float32(math.Inf(1)), 0x7f80},
		{"minus infinity", float32(math.Inf(-1)), 0xff80},
		// 1 + 2^-8 lies halfway between 1 (even mantissa) and 1 + 2^-7: ties go to even.
		{"tie rounds down to even", math.Float32frombits(0x3f80_8000), 0x3f80},
		// 1 + 3*2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
		{"tie rounds up to even", math.Float32frombits(0x3f81_8000), 0x3f82},
		{"above half rounds up", math.Float32frombits(0x3f80_8001), 0x3f81},
		{"below half rounds down", math.Float32frombits(0x3f80_7fff), 0x3f80},
		{"largest finite stays", math.Float32frombits(0x7f7f_0000), 0x7f7f},
		{"overflow rounds to infinity", math.MaxFloat32, 0x7f80},
		{"smallest subnormal bf16", math.Float32frombits(0x0001_0000), 0x0001},
		{"float32 subnormal rounds to zero", math.Float32frombits(0x0000_7fff), 0x0000},
		{"mantissa carry into exponent", math.Float32frombits(0x3fff_ffff), 0x4000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := FromFloat32(tc.in); got != tc.want {
				t.Errorf("FromFloat32(%g = %#08x) = %#04x, want %#04x", tc.in, math.Float32bits(tc.in), got, tc.want)
			}
		})
	}
}

func TestNaNStaysNaN(t *testing.T) {
	// Signalling NaNs whose payload lies only in the dropped bits would
	// become infinities if truncated.
	for _, bits := range []uint32{0x7f80_0001, 0xff80_0001, 0x7fc0_0000, 0x7f80_8000, 0xffff_ffff} {
		h := FromFloat32(math.Float32frombits(bits))
		f := ToFloat32(h)
		if !math.IsNaN(float64(f)) {
			t.Errorf("NaN %#08x became %#04x (%g)", bits, h, f)
		}
		if (h>>15 == 1) != (bits>>31 == 1) {
			t.Errorf("NaN %#08x lost its sign: %#04x", bits, h)
		}
	}
}

func TestRoundTripIsExact(t *testing.T) {
	// Every bfloat16 that is not a NaN widens and rounds back to itself.
	for h := 0; h <= 0xffff; h++ {
		f := ToFloat32(uint16(h))
		if math.IsNaN(float64(f)) {
			continue
		}
		if got := FromFloat32(f); got != uint16(h) {
			t.Fatalf("round trip of %#04x gave %#04x", h, got)
		}
	}
}

func TestRoundingIsNearest(t *testing.T) {
	// Against a float64 oracle: the chosen bf16 is at least as close as
	// both neighbours.
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		f := math.Float32frombits(r.Uint32())
		if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) || math.Abs(float64(f)) > 3e38 {
			continue
		}
		h := FromFloat32(f)
		got := math.Abs(float64(ToFloat32(h)) - float64(f))
		for _, n := range []uint16{h - 1, h + 1} {
			nf := float64(ToFloat32(n))
			if math.IsNaN(nf) || math.IsInf(nf, 0) || math.Signbit(nf) != math.Signbit(float64(f)) {
				continue
			}
			if d := math.Abs(nf - float64(f)); d < got {
				t.Fatalf("%g (%#08x) rounded to %#04x, but %#04x is closer", f, math.Float32bits(f), h, n)
			}
		}
	}
}

func TestSlices(t *testing.T) {
	src := []float32{1.5, -3.25, 1e-3, 65504}
	h := make([]uint16, len(src))
	FromFloat32s(h, src)
	back := make([]float32, len(src))
	ToFloat32s(back, h)
	for i := range src {
		if FromFloat32(src[i]) != h[i] || ToFloat32(h[i]) != back[i] {
			t.Errorf("element %d: slice conversion differs from scalar", i)
		}
	}
}
