package livetable

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
)

// Options configure Run.
type Options struct {
	Client   client.Reader
	Out      io.Writer
	Interval time.Duration
	// Terminal redraws the screen in place; otherwise a table is printed
	// every PlainEvery refreshes, for logs.
	Terminal   bool
	PlainEvery int
	// Header is printed above each table (the kubeconfig path, how to stop).
	Header string
}

// Run refreshes the table until ctx ends.
func Run(ctx context.Context, opts Options) {
	if opts.PlainEvery <= 0 {
		opts.PlainEvery = 10
	}
	t := time.NewTicker(opts.Interval)
	defer t.Stop()
	for i := 0; ; i++ {
		if opts.Terminal || i%opts.PlainEvery == 0 {
			var buf bytes.Buffer
			if opts.Terminal {
				buf.WriteString("\x1b[H\x1b[2J")
			}
			buf.WriteString(opts.Header)
			fmt.Fprintf(&buf, "%s\n\n", time.Now().Format(time.TimeOnly))
			if err := Draw(ctx, opts.Client, &buf); err != nil {
				fmt.Fprintf(&buf, "reading cluster state: %v\n", err)
			}
			_, _ = opts.Out.Write(buf.Bytes())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Draw reads the cluster once and renders it.
func Draw(ctx context.Context, c client.Reader, w io.Writer) error {
	var (
		services v1alpha1.MLAServiceList
		pods     corev1.PodList
		nodes    corev1.NodeList
	)
	if err := c.List(ctx, &services); err != nil {
		return fmt.Errorf("listing services: %w", err)
	}
	if err := c.List(ctx, &pods, client.MatchingLabels{v1alpha1.LabelComponent: v1alpha1.ComponentWorker}); err != nil {
		return fmt.Errorf("listing workers: %w", err)
	}
	if err := c.List(ctx, &nodes); err != nil {
		return fmt.Errorf("listing nodes: %w", err)
	}
	return Render(w, Snapshot{Services: services.Items, Workers: pods.Items, Nodes: nodes.Items, Now: time.Now()})
}
