package childproc

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestExitCodeAndLogs(t *testing.T) {
	dir := t.TempDir()
	var stderr lockedBuffer
	p, err := Start(Spec{Name: "sh", Path: "/bin/sh", Args: []string{"-c", "echo out; echo err >&2; exit 3"},
		LogPath: filepath.Join(dir, "logs", "sh.log"), Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.Wait(ctx)
	if got := p.ExitCode(); got != 3 {
		t.Errorf("exit code = %d, want 3", got)
	}
	log, _ := os.ReadFile(filepath.Join(dir, "logs", "sh.log"))
	if !strings.Contains(string(log), "out") || !strings.Contains(string(log), "err") {
		t.Errorf("log = %q, want both streams", log)
	}
	if strings.TrimSpace(stderr.String()) != "err" {
		t.Errorf("stderr = %q, want only stderr", stderr.String())
	}
}

func TestStopEscalatesToSIGKILLAndReachesTheGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "grandchild")
	// The shell ignores SIGTERM and starts a grandchild that does too: only
	// SIGKILL to the whole group ends both.
	script := `trap '' TERM; (trap '' TERM; sleep 60) & echo $! > ` + pidFile + `; wait`
	p, err := Start(Spec{Name: "stubborn", Path: "/bin/sh", Args: []string{"-c", script}, LogPath: filepath.Join(dir, "log")})
	if err != nil {
		t.Fatal(err)
	}
	var grandchild int
	deadline := time.Now().Add(5 * time.Second)
	for grandchild == 0 && time.Now().Before(deadline) {
		if b, err := os.ReadFile(pidFile); err == nil && len(bytes.TrimSpace(b)) > 0 {
			_, _ = fmt.Sscan(string(b), &grandchild)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if grandchild == 0 {
		t.Fatal("grandchild did not start")
	}
	start := time.Now()
	p.Stop(300 * time.Millisecond)
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("Stop returned after %s, before the grace period", el)
	}
	if got := p.ExitCode(); got != 128+int(syscall.SIGKILL) {
		t.Errorf("exit code = %d, want %d (SIGKILL)", got, 128+int(syscall.SIGKILL))
	}
	deadline = time.Now().Add(5 * time.Second)
	for syscall.Kill(grandchild, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %d still alive after Stop", grandchild)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStopWithinGraceUsesSIGTERM(t *testing.T) {
	p, err := Start(Spec{Name: "sleep", Path: "/bin/sleep", Args: []string{"60"}, LogPath: filepath.Join(t.TempDir(), "log")})
	if err != nil {
		t.Fatal(err)
	}
	p.Stop(10 * time.Second)
	if got := p.ExitCode(); got != 128+int(syscall.SIGTERM) {
		t.Errorf("exit code = %d, want %d (SIGTERM)", got, 128+int(syscall.SIGTERM))
	}
}
