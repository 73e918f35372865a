package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/localcluster/childproc"
	"github.com/mla-operator/mla-operator/worker/client"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// buildWorker compiles this command once for all tests of the package.
func buildWorker(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mla-worker-test-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "worker")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// tinyEnv is a two-layer model on a simulated 64 MiB GPU, listening on a
// loopback port the kernel picks, with reports off.
func tinyEnv(extra ...string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		v1alpha1.EnvLayers + "=2", v1alpha1.EnvAttentionHeads + "=16", v1alpha1.EnvReserveBytes + "=0",
		v1alpha1.EnvSimulatedGPU + "=Test-GPU:64", v1alpha1.EnvPodIP + "=127.0.0.1", v1alpha1.EnvPort + "=0",
		v1alpha1.EnvDevice + "=cpu",
	}
	return append(env, extra...)
}

type logLine struct {
	Msg  string `json:"msg"`
	Addr string `json:"addr"`
	Err  string `json:"err"`
}

func TestWorkerProcessServesAndDrainsOnSIGTERM(t *testing.T) {
	bin := buildWorker(t)
	// childproc, as the local cluster runs workers: the worker dies with
	// this test binary, even one killed by its timeout.
	stderr, stderrW := io.Pipe()
	proc, err := childproc.Start(childproc.Spec{Name: "worker", Path: bin, Args: []string{"--drain-timeout=20s"},
		Env: tinyEnv(), LogPath: filepath.Join(t.TempDir(), "worker.log"), Stderr: stderrW})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		<-proc.Done()
		stderrW.Close()
	}()
	lines := make(chan logLine, 100)
	defer func() {
		// Unblock the reader below, so that the killed child is reaped.
		go func() {
			for range lines {
			}
		}()
		proc.Stop(0)
	}()
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var l logLine
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				t.Errorf("log line is not JSON: %s", sc.Text())
				continue
			}
			lines <- l
		}
		close(lines)
	}()
	var addr string
	timeout := time.After(30 * time.Second)
	for addr == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("worker exited before serving")
			}
			if l.Msg == "serving" {
				addr = l.Addr
			}
		case <-timeout:
			t.Fatal("worker did not log its address")
		}
	}
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("worker serves on %s, want loopback", addr)
	}
	c := client.New("http://"+addr, nil)
	ctx := context.Background()
	seq, err := c.CreateSequence(ctx, 500)
	if err != nil {
		t.Fatal(err)
	}

	if err := proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.Ready(ctx) == nil {
		if time.Now().After(deadline) {
			t.Fatal("readyz still passes after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := c.CreateSequence(ctx, 10); !client.IsDraining(err) {
		t.Errorf("create after SIGTERM = %v, want 503", err)
	}
	if err := c.FreeSequence(ctx, seq.ID); err != nil {
		t.Fatal(err)
	}
	// Wait for the reader to finish, not only for the exit, so that a last
	// log line that is not JSON still fails the test: lines closes once
	// the worker has exited and all its stderr was read.
	drained := make(chan struct{})
	go func() {
		for range lines {
		}
		close(drained)
	}()
	select {
	case <-drained:
		if code := proc.ExitCode(); code != 0 {
			t.Fatalf("worker exited with status %d after draining, want 0", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("worker did not exit after its last sequence was freed")
	}
}

func TestWorkerProcessExitsOneWhenTheContextDoesNotFit(t *testing.T) {
	bin := buildWorker(t)
	cmd := exec.Command(bin)
	cmd.Env = tinyEnv(v1alpha1.EnvContextLength + "=1000000")
	out, err := cmd.CombinedOutput()
	if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 {
		t.Fatalf("exit = %v, want status 1\n%s", err, out)
	}
	if !strings.Contains(string(out), "the longest context that fits is 26176 tokens") {
		t.Errorf("log does not say what fits:\n%s", out)
	}
}

func TestHelpDocumentsTheEnvironment(t *testing.T) {
	bin := buildWorker(t)
	cmd := exec.Command(bin, "--help")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run() // flag's --help exits 0
	for _, env := range []string{v1alpha1.EnvLayers, v1alpha1.EnvContextLength, v1alpha1.EnvSimulatedGPU,
		v1alpha1.EnvSoftmaxScale, v1alpha1.EnvPodName, v1alpha1.EnvDevice, "--kubeconfig", "--drain-timeout"} {
		if !strings.Contains(out.String(), env) {
			t.Errorf("--help does not mention %s", env)
		}
	}
}
