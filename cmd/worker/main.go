// Command worker is an MLA inference worker: a paged latent KV cache sized
// like vLLM's on its GPU (or a simulated one), a decode engine, an HTTP
// serving API, and capacity reports on its own pod.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/mla-operator/mla-operator/worker/app"
	"github.com/mla-operator/mla-operator/worker/settings"
)

func main() {
	fs := flag.CommandLine // carries controller-runtime's --kubeconfig
	s, envErr := settings.Register(fs, os.Getenv)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: worker [flags]

Serves MLA decode attention over a paged latent KV cache and reports its
capacity on its pod. Every model and cache flag defaults from the environment
variable the operator sets (shown with each flag), so a worker started by the
operator needs no flags. Capacity reports are written when MLA_POD_NAME and
MLA_POD_NAMESPACE are set, with the kubeconfig from --kubeconfig, KUBECONFIG
or the in-cluster service account. SIGTERM stops admitting, reports draining
and exits once the last sequence is freed or --drain-timeout passes.

API reference: docs/worker-api.md.

Flags:
`)
		fs.PrintDefaults()
	}
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(s.LogLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "worker: --log-level: %v\n", err)
		os.Exit(2)
	}
	handler := slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	log := slog.New(handler).With("service", s.ServiceName, "pod", s.PodName)
	slog.SetDefault(log)
	ctrllog.SetLogger(logr.FromSlogHandler(log.Handler()))

	if err := envErr(); err != nil {
		log.Error("invalid environment", "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := app.Run(ctx, s, app.Deps{Logger: log}); err != nil {
		stop()
		os.Exit(1)
	}
}
