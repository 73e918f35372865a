// Package integration holds the envtest suites: one real kube-apiserver and
// etcd per test binary, shared by every test here through testEnv.
package integration

import (
	"fmt"
	"os"
	"testing"

	"github.com/mla-operator/mla-operator/test/integration/framework"
)

var testEnv *framework.Env

func TestMain(m *testing.M) {
	env, err := framework.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	testEnv = env
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: stopping control plane:", err)
	}
	os.Exit(code)
}
