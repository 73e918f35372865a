// Package kwok runs kwok against the local control plane: it keeps the
// simulated nodes Ready (lease heartbeats) and drives the status of ordinary
// pods through the Stages of config/local/kwok.yaml, which exclude worker
// pods (the process runtime owns those).
package kwok

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/mla-operator/mla-operator/config/local"
	"github.com/mla-operator/mla-operator/internal/localcluster/childproc"
	"github.com/mla-operator/mla-operator/internal/localcluster/clusterconfig"
)

// Options configure Start.
type Options struct {
	// Binary is the kwok executable.
	Binary string
	// Kubeconfig reaches the apiserver.
	Kubeconfig string
	// WorkDir receives kwok's configuration and log.
	WorkDir string
	// PodCIDRs give kwok its loopback range for ordinary pods.
	PodCIDRs clusterconfig.PodCIDRs
	// ConfigYAML replaces config/local/kwok.yaml when set.
	ConfigYAML []byte
}

// Kwok is a running kwok controller.
type Kwok struct {
	proc    *childproc.Process
	logPath string
}

// Args are kwok's command-line arguments for opts, with configPath holding
// its configuration.
func Args(opts Options, configPath string) []string {
	return []string{
		"--kubeconfig=" + opts.Kubeconfig,
		"--config=" + configPath,
		// Only the nodes the local cluster made: a person may add real-looking
		// nodes of their own for experiments.
		"--manage-nodes-with-label-selector=" + clusterconfig.LabelSimulated + "=true",
		"--cidr=" + opts.PodCIDRs.Kwok().String(),
		"--node-ip=127.0.0.1",
		"--node-lease-duration-seconds=40",
	}
}

// Start starts kwok.
func Start(ctx context.Context, opts Options) (*Kwok, error) {
	if _, err := os.Stat(opts.Binary); err != nil {
		return nil, fmt.Errorf("kwok binary missing (run `make bins`): %w", err)
	}
	config := opts.ConfigYAML
	if config == nil {
		config = local.KwokYAML
	}
	configPath := filepath.Join(opts.WorkDir, "kwok.yaml")
	if err := os.WriteFile(configPath, config, 0o644); err != nil {
		return nil, fmt.Errorf("writing kwok config: %w", err)
	}
	k := &Kwok{logPath: filepath.Join(opts.WorkDir, "logs", "kwok.log")}
	p, err := childproc.Start(childproc.Spec{Name: "kwok", Path: opts.Binary, Args: Args(opts, configPath), LogPath: k.logPath})
	if err != nil {
		return nil, err
	}
	k.proc = p
	select {
	case <-time.After(500 * time.Millisecond):
	case <-ctx.Done():
		k.Stop()
		return nil, ctx.Err()
	}
	if err := k.Healthy(); err != nil {
		return nil, err
	}
	return k, nil
}

// Healthy reports whether kwok has exited.
func (k *Kwok) Healthy() error {
	select {
	case <-k.proc.Done():
		return fmt.Errorf("kwok exited with code %d; see %s", k.proc.ExitCode(), k.logPath)
	default:
		return nil
	}
}

// Stop stops kwok.
func (k *Kwok) Stop() {
	if k.proc != nil {
		k.proc.Stop(5 * time.Second)
	}
}
