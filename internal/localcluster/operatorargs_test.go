package localcluster

import (
	"strings"
	"testing"
)

func TestOperatorArgsGetLoopbackPortsUnlessSet(t *testing.T) {
	args, metrics, err := operatorArgs([]string{"--zap-log-level=debug"})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(args, " ")
	if !strings.Contains(joined, "--metrics-bind-address=127.0.0.1:") || !strings.Contains(joined, "--health-probe-bind-address=127.0.0.1:") {
		t.Errorf("args %q lack loopback endpoints", args)
	}
	if !strings.HasPrefix(metrics, "127.0.0.1:") || !strings.Contains(joined, metrics) {
		t.Errorf("metrics address %q not among %q", metrics, args)
	}
	args, metrics, err = operatorArgs([]string{"-metrics-bind-address=127.0.0.1:9999"})
	if err != nil {
		t.Fatal(err)
	}
	if metrics != "127.0.0.1:9999" || strings.Count(strings.Join(args, " "), "metrics-bind-address") != 1 {
		t.Errorf("user's metrics address not kept: %q, %q", metrics, args)
	}
}
