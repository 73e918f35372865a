package processruntime

import (
	"bytes"
	"strings"
	"sync"
)

// tailBuffer keeps the last lines of a stream: the termination message of a
// failed worker is the end of its stderr, as with the kubelet's
// FallbackToLogsOnError (80 lines, 2,048 bytes there).
type tailBuffer struct {
	mu       sync.Mutex
	buf      []byte
	maxBytes int
}

func newTailBuffer(maxBytes int) *tailBuffer { return &tailBuffer{maxBytes: maxBytes} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - 4*t.maxBytes; over > 0 {
		t.buf = append([]byte(nil), t.buf[over:]...)
	}
	return len(p), nil
}

// Lines returns up to n last lines, at most maxBytes long, cut at a line
// start where possible.
func (t *tailBuffer) Lines(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := bytes.TrimRight(t.buf, "\n")
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	s := string(bytes.Join(lines, []byte("\n")))
	if len(s) > t.maxBytes {
		s = s[len(s)-t.maxBytes:]
		if i := strings.IndexByte(s, '\n'); i >= 0 && i < len(s)-1 {
			s = s[i+1:]
		}
	}
	return s
}
