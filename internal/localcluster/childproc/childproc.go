// Package childproc runs the local cluster's helper processes (scheduler,
// controller manager, kwok, operator, workers): each in its own process
// group with its output in a log file, killed with its parent, and stopped
// the way a kubelet stops a container: SIGTERM, a grace period, SIGKILL.
package childproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Spec is a process to start.
type Spec struct {
	// Name is used in errors.
	Name string
	Path string
	Args []string
	// Env is the whole environment; nil inherits the parent's.
	Env []string
	Dir string
	// LogPath receives stdout and stderr (appended).
	LogPath string
	// Stderr, when set, also receives stderr (for example a tail buffer).
	Stderr io.Writer
}

// Process is a started child.
type Process struct {
	spec    Spec
	cmd     *exec.Cmd
	logFile *os.File
	done    chan struct{}
	err     error
	state   *os.ProcessState
	mu      sync.Mutex
}

// Start starts spec in a new process group. The child gets SIGKILL if this
// process dies first (Pdeathsig), so a crash of the harness leaves nothing
// behind either.
func Start(spec Spec) (*Process, error) {
	if err := os.MkdirAll(filepath.Dir(spec.LogPath), 0o755); err != nil {
		return nil, fmt.Errorf("%s: log dir: %w", spec.Name, err)
	}
	logFile, err := os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: log file: %w", spec.Name, err)
	}
	cmd := exec.Command(spec.Path, spec.Args...)
	cmd.Env = spec.Env
	cmd.Dir = spec.Dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if spec.Stderr != nil {
		cmd.Stderr = io.MultiWriter(logFile, spec.Stderr)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", spec.Name, spec.Path, err)
	}
	p := &Process{spec: spec, cmd: cmd, logFile: logFile, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.err, p.state = err, cmd.ProcessState
		p.mu.Unlock()
		_ = logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the child's process id (and process group id).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the child exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitCode is the child's exit code once Done, -1 while running; a child
// killed by a signal reports 128+signal, as container runtimes do.
func (p *Process) ExitCode() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		return -1
	}
	if ws, ok := p.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return p.state.ExitCode()
}

// Signal sends sig to the child's whole process group.
func (p *Process) Signal(sig syscall.Signal) error {
	err := syscall.Kill(-p.cmd.Process.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// Stop sends SIGTERM, waits up to grace for the child to exit, then sends
// SIGKILL and waits for it. It returns once the child is gone.
func (p *Process) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	}
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// Wait waits for the child to exit or ctx to end.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
