package cachehandler

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
)

// Entry is one cached response: everything a hit needs in one value, so a
// hit from Redis costs one round trip.
type Entry struct {
	Status   int
	Header   http.Header // end-to-end headers worth keeping (no Set-Cookie, no hop-by-hop)
	ETag     string
	StoredAt time.Time
	TTL      time.Duration // freshness; the value lives TTL+grace for stale serving
	Tags     []string
	// TagVersions are the Redis versions of Tags when the fill began (same
	// order). A reader serves the entry only while every tag is still at
	// that version, so a fill that lost a race with an invalidation is
	// never served, even in the moment before its filler deletes it or
	// when its filler died before it could. nil for an L1-only entry.
	TagVersions []int64
	// SoftVersions are the soft-purge stamps (softpurge.go) of Tags when
	// the fill began, then the key's own (len(Tags)+1 values): a tag or
	// key soft-purged since makes the entry stale, not unservable. nil: 0
	// for each (any soft purge of its tags makes it stale).
	SoftVersions []int64
	Body         []byte // gzip when Gzipped, else identity
	Gzipped      bool
	// VaryNames and VaryValues make the entry one variant of its rule key
	// (variants.go): the request headers the response varies on, beyond
	// Accept-Encoding, and the request's normalised values for them.
	VaryNames  []string
	VaryValues []string
	// OriginETag: ETag is the origin's (weakened), not one the edge derived
	// from the body, so it can validate a conditional refresh.
	OriginETag bool
}

// ErrCorrupt means a stored value could not be decoded; the caller deletes
// it and refetches.
var ErrCorrupt = errors.New("corrupt cache entry")

const (
	entryMagic     = "TE1"
	flagGzip       = 1
	flagVersions   = 2 // a version follows each tag
	flagVary       = 4 // a variant: its Vary names and values follow the tags
	flagOriginETag = 8
	flagSoft       = 16 // soft-purge stamps follow the tags (and the Vary values)
	maxHeaderCount = 64
	maxHeaderBytes = 16 << 10
	maxTagCount    = 32
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Encode serialises the entry: magic, flags, status, times, ETag, tags,
// headers, body, then a CRC32C of all of it so truncation or a stray
// write is caught.
func (e *Entry) Encode() []byte {
	size := 64 + len(e.ETag) + len(e.Body)
	for k, vs := range e.Header {
		size += 4 + len(k)
		for _, v := range vs {
			size += 2 + len(v)
		}
	}
	for _, t := range e.Tags {
		size += 18 + len(t)
	}
	for i := range e.VaryNames {
		size += 4 + len(e.VaryNames[i]) + len(e.VaryValues[i])
	}
	b := make([]byte, 0, size)
	b = append(b, entryMagic...)
	flags := byte(0)
	if e.Gzipped {
		flags |= flagGzip
	}
	versions := len(e.TagVersions) == len(e.Tags) && e.TagVersions != nil
	if versions {
		flags |= flagVersions
	}
	vary := len(e.VaryNames) > 0 && len(e.VaryNames) == len(e.VaryValues)
	if vary {
		flags |= flagVary
	}
	if e.OriginETag {
		flags |= flagOriginETag
	}
	soft := len(e.SoftVersions) > 0 && len(e.SoftVersions) <= maxTagCount+1
	if soft {
		flags |= flagSoft
	}
	b = append(b, flags)
	b = binary.BigEndian.AppendUint16(b, uint16(e.Status))
	b = binary.BigEndian.AppendUint64(b, uint64(e.StoredAt.UnixMilli()))
	b = binary.BigEndian.AppendUint64(b, uint64(e.TTL.Milliseconds()))
	b = appendStr(b, e.ETag)
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.Tags)))
	for i, t := range e.Tags {
		b = appendStr(b, t)
		if versions {
			b = binary.BigEndian.AppendUint64(b, uint64(e.TagVersions[i]))
		}
	}
	if vary {
		b = binary.BigEndian.AppendUint16(b, uint16(len(e.VaryNames)))
		for i := range e.VaryNames {
			b = appendStr(b, e.VaryNames[i])
			b = appendStr(b, e.VaryValues[i])
		}
	}
	if soft {
		b = binary.BigEndian.AppendUint16(b, uint16(len(e.SoftVersions)))
		for _, v := range e.SoftVersions {
			b = binary.BigEndian.AppendUint64(b, uint64(v))
		}
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.Header)))
	for k, vs := range e.Header {
		b = appendStr(b, k)
		b = binary.BigEndian.AppendUint16(b, uint16(len(vs)))
		for _, v := range vs {
			b = appendStr(b, v)
		}
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(e.Body)))
	b = append(b, e.Body...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func appendStr(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// DecodeEntry parses a stored value, bounding every length by what is left
// so a corrupt value can never make it allocate wildly or panic.
func DecodeEntry(b []byte) (*Entry, error) {
	if len(b) < len(entryMagic)+4 || string(b[:len(entryMagic)]) != entryMagic {
		return nil, ErrCorrupt
	}
	payload, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(payload, castagnoli) != sum {
		return nil, ErrCorrupt
	}
	r := reader{b: payload[len(entryMagic):]}
	e, flags, ok := readEntryHead(&r)
	if !ok {
		return nil, ErrCorrupt
	}
	if flags&flagVary != 0 {
		n := int(r.u16())
		if n == 0 || n > maxVaryNames {
			return nil, ErrCorrupt
		}
		for range n {
			e.VaryNames = append(e.VaryNames, r.str())
			e.VaryValues = append(e.VaryValues, r.str())
		}
	}
	if flags&flagSoft != 0 {
		n := int(r.u16())
		if n > maxTagCount+1 {
			return nil, ErrCorrupt
		}
		e.SoftVersions = make([]int64, 0, n)
		for range n {
			e.SoftVersions = append(e.SoftVersions, int64(r.u64()))
		}
	}
	if e.Header = r.header(); e.Header == nil {
		return nil, ErrCorrupt
	}
	n := int(r.u32())
	e.Body = r.bytes(n)
	if r.err || len(r.b) != 0 || e.Status < 100 || e.Status > 999 {
		return nil, ErrCorrupt
	}
	return e, nil
}

// entryHeadMax bounds what decodeEntryHead needs: the fixed fields, an
// ETag and maxTagCount tags with their versions.
const entryHeadMax = 1 + 2 + 8 + 8 + (2 + 1024) + 2 + maxTagCount*(2+maxTagLen+8) + len(entryMagic)

// readEntryHead reads what precedes the Vary values, soft stamps, headers
// and body: flags, status, times, ETag, tags and their versions.
func readEntryHead(r *reader) (*Entry, byte, bool) {
	e := &Entry{}
	flags := r.u8()
	e.Gzipped = flags&flagGzip != 0
	e.OriginETag = flags&flagOriginETag != 0
	e.Status = int(r.u16())
	e.StoredAt = time.UnixMilli(int64(r.u64()))
	e.TTL = time.Duration(r.u64()) * time.Millisecond
	e.ETag = r.str()
	n := int(r.u16())
	if n > maxTagCount {
		return nil, 0, false
	}
	if flags&flagVersions != 0 {
		e.TagVersions = make([]int64, 0, n)
	}
	for range n {
		e.Tags = append(e.Tags, r.str())
		if flags&flagVersions != 0 {
			e.TagVersions = append(e.TagVersions, int64(r.u64()))
		}
	}
	return e, flags, true
}

// decodeEntryHead reads an entry's head (readEntryHead) from a prefix of
// its stored value, at most entryHeadMax bytes: no checksum to verify.
func decodeEntryHead(b []byte) (*Entry, bool) {
	if len(b) < len(entryMagic) || string(b[:len(entryMagic)]) != entryMagic {
		return nil, false
	}
	r := reader{b: b[len(entryMagic):]}
	e, _, ok := readEntryHead(&r)
	return e, ok && !r.err
}

// reader is a bounds-checked cursor; after the first short read every
// call returns zero values and err stays set.
type reader struct {
	b   []byte
	err bool
}

func (r *reader) take(n int) []byte {
	if r.err || n < 0 || n > len(r.b) {
		r.err = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() byte {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if v := r.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *reader) str() string { return string(r.take(int(r.u16()))) }

// header reads a header map as both entry formats store it (a count, then
// each name with its counted values); nil when a count is out of bounds.
func (r *reader) header() http.Header {
	nh := int(r.u16())
	if nh > maxHeaderCount {
		return nil
	}
	h := make(http.Header, nh)
	for range nh {
		k := r.str()
		nv := int(r.u16())
		if nv > maxHeaderCount {
			return nil
		}
		vs := make([]string, 0, nv)
		for range nv {
			vs = append(vs, r.str())
		}
		h[k] = vs
	}
	return h
}
func (r *reader) bytes(n int) []byte {
	v := r.take(n)
	if v == nil {
		return nil
	}
	return bytes.Clone(v)
}

var gzipWriters = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(io.Discard, gzip.DefaultCompression)
	return w
}}

// compressBody gzips body; it reports false when compression does not
// pay (already compressed data such as images).
func compressBody(body []byte) ([]byte, bool) {
	var buf bytes.Buffer
	buf.Grow(len(body) / 3)
	zw := gzipWriters.Get().(*gzip.Writer)
	zw.Reset(&buf)
	_, err := zw.Write(body)
	if err == nil {
		err = zw.Close()
	}
	gzipWriters.Put(zw)
	if err != nil || buf.Len() >= len(body)*9/10 {
		return nil, false
	}
	return buf.Bytes(), true
}

// decompressBody gunzips, refusing to inflate past limit (a zip bomb in a
// corrupt or hostile entry must not exhaust memory).
func decompressBody(body []byte, limit int) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		return nil, ErrCorrupt
	}
	defer zr.Close()
	out, err := io.ReadAll(io.LimitReader(zr, int64(limit)+1))
	if err != nil || len(out) > limit {
		return nil, ErrCorrupt
	}
	return out, nil
}

// weakETag derives a validator from the identity body. Weak, because the
// same entry is served gzip-encoded and plain (RFC 9110 §8.8.1).
func weakETag(body []byte) string {
	sum := crc32.Checksum(body, castagnoli)
	return `W/"` + strconv.FormatUint(uint64(sum), 36) + "-" + strconv.Itoa(len(body)) + `"`
}
