// Package wire is the worker's serving protocol: the JSON bodies of its
// control endpoints and the binary frames its hot path carries tensors in
// (never JSON number arrays). docs/worker-api.md describes both; the server
// and the Go client share this package so they cannot disagree.
//
// All binary integers and floats are little-endian. A frame starts with a
// 4-byte magic that says what it is, so a body sent to the wrong endpoint is
// refused rather than misread.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unsafe"

	"github.com/mla-operator/mla-operator/worker/bf16"
)

// ContentType is the media type of every binary frame.
const ContentType = "application/octet-stream"

// Row widths of the latent cache.
const (
	RowDim    = 576 // latent (512) + RoPE (64), per token and layer
	LatentDim = 512 // output width per head
)

// Limits that bound what a decoder allocates.
const (
	// MaxBatch is the most sequences one decode step takes.
	MaxBatch = 4096
	// MaxRows is the most tokens one tensor frame carries.
	MaxRows = 1 << 20
)

// DType is a tensor element type on the wire.
type DType uint8

const (
	// BF16 is bfloat16, 2 bytes per value.
	BF16 DType = 1
	// FP32 is IEEE binary32, 4 bytes per value.
	FP32 DType = 2
)

// Size is the bytes per value.
func (d DType) Size() int {
	switch d {
	case BF16:
		return 2
	case FP32:
		return 4
	}
	return 0
}

func (d DType) String() string {
	switch d {
	case BF16:
		return "bf16"
	case FP32:
		return "fp32"
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

func (d DType) valid() error {
	if d.Size() == 0 {
		return fmt.Errorf("unknown dtype %d (1 = bf16, 2 = fp32)", uint8(d))
	}
	return nil
}

// ErrMalformed wraps every decoding error.
var ErrMalformed = errors.New("malformed frame")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

var le = binary.LittleEndian

// nativeLittle is true on little-endian hosts, where bf16 values are copied
// to and from frames as bytes instead of one at a time.
var nativeLittle = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

func u16Bytes(v []uint16) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 2*len(v))
}

// putValues appends bf16 values as dtype.
func putValues(dst []byte, dtype DType, vals []uint16) []byte {
	switch dtype {
	case FP32:
		for _, v := range vals {
			dst = le.AppendUint32(dst, math.Float32bits(bf16.ToFloat32(v)))
		}
	default:
		if nativeLittle {
			return append(dst, u16Bytes(vals)...)
		}
		for _, v := range vals {
			dst = le.AppendUint16(dst, v)
		}
	}
	return dst
}

// bf16Values returns n values of dtype from src as bf16. On little-endian
// hosts a bf16 payload at an even address is returned in place, without a
// copy: tensors run to megabytes per request, and the result then aliases
// src, which callers of the decoders hand over for good.
func bf16Values(dtype DType, src []byte, n int) []uint16 {
	if dtype == BF16 && nativeLittle && n > 0 && uintptr(unsafe.Pointer(&src[0]))%2 == 0 {
		return unsafe.Slice((*uint16)(unsafe.Pointer(&src[0])), n)
	}
	dst := make([]uint16, n)
	getValues(dst, dtype, src)
	return dst
}

// getValues reads len(dst) values of dtype from src into bf16, rounding
// fp32 to nearest even.
func getValues(dst []uint16, dtype DType, src []byte) {
	switch dtype {
	case FP32:
		for i := range dst {
			dst[i] = bf16.FromFloat32(math.Float32frombits(le.Uint32(src[4*i:])))
		}
	default:
		if nativeLittle {
			copy(u16Bytes(dst), src[:2*len(dst)])
			return
		}
		for i := range dst {
			dst[i] = le.Uint16(src[2*i:])
		}
	}
}

// Rows frame: a [tokens, 576] tensor of latent KV rows.
//
//	0   4  magic "MLAR"
//	4   1  dtype (1 bf16, 2 fp32)
//	5   3  zero
//	8   4  tokens (uint32, >= 1)
//	12  4  row width (uint32, 576)
//	16  .. tokens x 576 values
var rowsMagic = [4]byte{'M', 'L', 'A', 'R'}

const rowsHeader = 16

// EncodeRows frames bf16 rows (a multiple of RowDim values) as dtype.
func EncodeRows(dtype DType, rows []uint16) []byte {
	tokens := len(rows) / RowDim
	b := make([]byte, 0, rowsHeader+len(rows)*dtype.Size())
	b = append(b, rowsMagic[:]...)
	b = append(b, byte(dtype), 0, 0, 0)
	b = le.AppendUint32(b, uint32(tokens))
	b = le.AppendUint32(b, RowDim)
	return putValues(b, dtype, rows)
}

// EncodeRowsFloat32 frames fp32 rows as fp32, without a bf16 round trip.
func EncodeRowsFloat32(rows []float32) []byte {
	b := make([]byte, 0, rowsHeader+4*len(rows))
	b = append(b, rowsMagic[:]...)
	b = append(b, byte(FP32), 0, 0, 0)
	b = le.AppendUint32(b, uint32(len(rows)/RowDim))
	b = le.AppendUint32(b, RowDim)
	for _, v := range rows {
		b = le.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

// DecodeRows parses a rows frame into bf16 values, which may alias b.
func DecodeRows(b []byte) ([]uint16, error) {
	if len(b) < rowsHeader {
		return nil, malformed("rows frame of %d bytes is shorter than its %d-byte header", len(b), rowsHeader)
	}
	if [4]byte(b[:4]) != rowsMagic {
		return nil, malformed("rows frame must start with %q, got %q", rowsMagic[:], b[:4])
	}
	dtype := DType(b[4])
	if err := dtype.valid(); err != nil {
		return nil, malformed("%v", err)
	}
	if b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return nil, malformed("reserved header bytes must be zero")
	}
	tokens, width := le.Uint32(b[8:]), le.Uint32(b[12:])
	if width != RowDim {
		return nil, malformed("row width must be %d, got %d", RowDim, width)
	}
	if tokens < 1 || tokens > MaxRows {
		return nil, malformed("token count must be in [1, %d], got %d", MaxRows, tokens)
	}
	n := int(tokens) * RowDim
	if want := rowsHeader + n*dtype.Size(); len(b) != want {
		return nil, malformed("%d %s rows need %d bytes, frame has %d", tokens, dtype, want, len(b))
	}
	return bf16Values(dtype, b[rowsHeader:], n), nil
}

// DecodeRequest is one batched decode step of one layer.
//
//	0   4  magic "MLAD"
//	4   1  q dtype
//	5   1  out dtype the response should carry
//	6   2  zero
//	8   4  layer
//	12  4  batch (sequences, 1..MaxBatch)
//	16  4  s_q (query tokens per sequence: 1 or 2)
//	20  4  heads (16, 32, 64 or 128)
//	24  4  softmax scale (fp32; 0 = the worker's model default)
//	28  4  zero
//	32  .. batch x uint64 sequence ids
//	..  .. q, [batch, s_q, heads, 576] values of q dtype
type DecodeRequest struct {
	Layer int
	SQ    int
	Heads int
	// Scale multiplies QK^T; 0 asks for the worker's model default.
	Scale float32
	IDs   []uint64
	// Q holds bf16 bits, [len(IDs), SQ, Heads, 576].
	Q []uint16
	// QDType is how Q travels; FP32 widens exactly, so only costs bytes.
	QDType DType
	// OutDType is how the response carries Out.
	OutDType DType
}

var decodeMagic = [4]byte{'M', 'L', 'A', 'D'}

const decodeHeader = 32

// Marshal frames r. Zero dtypes mean bf16.
func (r *DecodeRequest) Marshal() []byte {
	qd, od := orBF16(r.QDType), orBF16(r.OutDType)
	b := make([]byte, 0, decodeHeader+8*len(r.IDs)+len(r.Q)*qd.Size())
	b = append(b, decodeMagic[:]...)
	b = append(b, byte(qd), byte(od), 0, 0)
	b = le.AppendUint32(b, uint32(r.Layer))
	b = le.AppendUint32(b, uint32(len(r.IDs)))
	b = le.AppendUint32(b, uint32(r.SQ))
	b = le.AppendUint32(b, uint32(r.Heads))
	b = le.AppendUint32(b, math.Float32bits(r.Scale))
	b = le.AppendUint32(b, 0)
	for _, id := range r.IDs {
		b = le.AppendUint64(b, id)
	}
	return putValues(b, qd, r.Q)
}

func orBF16(d DType) DType {
	if d == 0 {
		return BF16
	}
	return d
}

// UnmarshalDecodeRequest parses and bounds-checks a decode frame; Q may
// alias b.
func UnmarshalDecodeRequest(b []byte) (*DecodeRequest, error) {
	if len(b) < decodeHeader {
		return nil, malformed("decode frame of %d bytes is shorter than its %d-byte header", len(b), decodeHeader)
	}
	if [4]byte(b[:4]) != decodeMagic {
		return nil, malformed("decode frame must start with %q, got %q", decodeMagic[:], b[:4])
	}
	r := &DecodeRequest{QDType: DType(b[4]), OutDType: DType(b[5])}
	if err := r.QDType.valid(); err != nil {
		return nil, malformed("q: %v", err)
	}
	if err := r.OutDType.valid(); err != nil {
		return nil, malformed("out: %v", err)
	}
	if b[6] != 0 || b[7] != 0 || le.Uint32(b[28:]) != 0 {
		return nil, malformed("reserved header bytes must be zero")
	}
	layer, batch, sq, heads := le.Uint32(b[8:]), le.Uint32(b[12:]), le.Uint32(b[16:]), le.Uint32(b[20:])
	r.Scale = math.Float32frombits(le.Uint32(b[24:]))
	switch {
	case layer > math.MaxInt32:
		return nil, malformed("layer %d out of range", layer)
	case batch < 1 || batch > MaxBatch:
		return nil, malformed("batch must be in [1, %d], got %d", MaxBatch, batch)
	case sq != 1 && sq != 2:
		return nil, malformed("s_q must be 1 or 2, got %d", sq)
	case heads != 16 && heads != 32 && heads != 64 && heads != 128:
		return nil, malformed("heads must be 16, 32, 64 or 128, got %d", heads)
	case math.IsNaN(float64(r.Scale)) || math.IsInf(float64(r.Scale), 0) || r.Scale < 0:
		return nil, malformed("scale must be finite and not negative (0 = model default), got %g", r.Scale)
	}
	r.Layer, r.SQ, r.Heads = int(layer), int(sq), int(heads)
	n := int(batch) * r.SQ * r.Heads * RowDim
	if want := decodeHeader + 8*int(batch) + n*r.QDType.Size(); len(b) != want {
		return nil, malformed("batch %d x s_q %d x %d heads of %s q need a %d-byte frame, got %d",
			batch, sq, heads, r.QDType, want, len(b))
	}
	r.IDs = make([]uint64, batch)
	for i := range r.IDs {
		r.IDs[i] = le.Uint64(b[decodeHeader+8*i:])
	}
	r.Q = bf16Values(r.QDType, b[decodeHeader+8*int(batch):], n)
	return r, nil
}

// DecodeResponse is a decode step's result.
//
//	0   4  magic "MLAO"
//	4   1  out dtype
//	5   3  zero
//	8   4  batch
//	12  4  s_q
//	16  4  heads
//	20  4  zero
//	24  .. out, [batch, s_q, heads, 512] values of out dtype
//	..  .. lse, [batch, heads, s_q] fp32
type DecodeResponse struct {
	Batch, SQ, Heads int
	OutDType         DType
	// Out holds bf16 bits, [Batch, SQ, Heads, 512], whatever OutDType.
	Out []uint16
	// LSE is the natural log of each query's softmax denominator,
	// [Batch, Heads, SQ].
	LSE []float32
}

var responseMagic = [4]byte{'M', 'L', 'A', 'O'}

const responseHeader = 24

// Marshal frames r.
func (r *DecodeResponse) Marshal() []byte {
	od := orBF16(r.OutDType)
	b := appendResponseHeader(make([]byte, 0, responseHeader+len(r.Out)*od.Size()+4*len(r.LSE)), od, r.Batch, r.SQ, r.Heads)
	b = putValues(b, od, r.Out)
	for _, v := range r.LSE {
		b = le.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

// appendResponseHeader appends a decode response frame's header.
func appendResponseHeader(b []byte, od DType, batch, sq, heads int) []byte {
	b = append(b, responseMagic[:]...)
	b = append(b, byte(od), 0, 0, 0)
	b = le.AppendUint32(b, uint32(batch))
	b = le.AppendUint32(b, uint32(sq))
	b = le.AppendUint32(b, uint32(heads))
	return le.AppendUint32(b, 0)
}

// ResponseFrame allocates a bf16 decode response frame and returns views of
// its out and lse payloads, so an engine can write its results in place
// and the frame go out without another copy. ok is false on big-endian
// hosts, where Marshal must be used.
func ResponseFrame(batch, sq, heads int) (frame []byte, out []uint16, lse []float32, ok bool) {
	if !nativeLittle {
		return nil, nil, nil, false
	}
	nOut, nLSE := batch*sq*heads*LatentDim, batch*heads*sq
	size := responseHeader + 2*nOut + 4*nLSE
	frame = appendResponseHeader(make([]byte, 0, size), BF16, batch, sq, heads)[:size]
	// make's memory is 8-byte aligned and both offsets are multiples of 4.
	out = unsafe.Slice((*uint16)(unsafe.Pointer(&frame[responseHeader])), nOut)
	lse = unsafe.Slice((*float32)(unsafe.Pointer(&frame[responseHeader+2*nOut])), nLSE)
	return frame, out, lse, true
}

// UnmarshalDecodeResponse parses a decode response frame; Out may alias b.
func UnmarshalDecodeResponse(b []byte) (*DecodeResponse, error) {
	if len(b) < responseHeader {
		return nil, malformed("response frame of %d bytes is shorter than its %d-byte header", len(b), responseHeader)
	}
	if [4]byte(b[:4]) != responseMagic {
		return nil, malformed("response frame must start with %q, got %q", responseMagic[:], b[:4])
	}
	r := &DecodeResponse{OutDType: DType(b[4])}
	if err := r.OutDType.valid(); err != nil {
		return nil, malformed("out: %v", err)
	}
	if b[5] != 0 || b[6] != 0 || b[7] != 0 || le.Uint32(b[20:]) != 0 {
		return nil, malformed("reserved header bytes must be zero")
	}
	batch, sq, heads := le.Uint32(b[8:]), le.Uint32(b[12:]), le.Uint32(b[16:])
	if batch < 1 || batch > MaxBatch || (sq != 1 && sq != 2) || (heads != 16 && heads != 32 && heads != 64 && heads != 128) {
		return nil, malformed("batch %d, s_q %d, heads %d out of range", batch, sq, heads)
	}
	r.Batch, r.SQ, r.Heads = int(batch), int(sq), int(heads)
	nOut := r.Batch * r.SQ * r.Heads * LatentDim
	nLSE := r.Batch * r.Heads * r.SQ
	if want := responseHeader + nOut*r.OutDType.Size() + 4*nLSE; len(b) != want {
		return nil, malformed("response for batch %d x s_q %d x %d heads needs %d bytes, got %d", batch, sq, heads, want, len(b))
	}
	r.Out = bf16Values(r.OutDType, b[responseHeader:], nOut)
	lse := b[responseHeader+nOut*r.OutDType.Size():]
	r.LSE = make([]float32, nLSE)
	for i := range r.LSE {
		r.LSE[i] = math.Float32frombits(le.Uint32(lse[4*i:]))
	}
	return r, nil
}
