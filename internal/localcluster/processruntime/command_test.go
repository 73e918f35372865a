package processruntime

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/test/builders"
)

func envOf(cmd Command) map[string]string {
	m := map[string]string{}
	for _, kv := range cmd.Env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

func TestBuildCommand(t *testing.T) {
	node := builders.GPUNode("h200-0", builders.H200, 8).Obj()
	pod := builders.Pod("ns", "w-1").WorkerOf("svc").OnNode("h200-0").Label("team", "a").Obj()
	pod.UID = "uid-1"
	c := &pod.Spec.Containers[0]
	c.Command = []string{"/worker", "serve"}
	c.Args = []string{"--port=$(MLA_PORT)", "--literal=$$(MLA_PORT)", "--unknown=$(NOPE)"}
	c.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("3Gi")}
	c.Env = []corev1.EnvVar{
		{Name: v1alpha1.EnvPort, Value: "8080"},
		{Name: "ADDR", Value: "$(MLA_POD_IP):$(MLA_PORT)"},
		fieldEnv(v1alpha1.EnvPodName, "metadata.name"),
		fieldEnv(v1alpha1.EnvPodNamespace, "metadata.namespace"),
		fieldEnv(v1alpha1.EnvNodeName, "spec.nodeName"),
		fieldEnv(v1alpha1.EnvPodIP, "status.podIP"),
		fieldEnv("TEAM", "metadata.labels['team']"),
		fieldEnv("UID", "metadata.uid"),
		{Name: v1alpha1.EnvDevice, Value: "cuda"},
		{Name: "MEM_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
	}
	cmd, err := BuildCommand(CommandInput{Pod: pod, Node: node, PodIP: "127.20.1.1", WorkerBinary: "/bin/worker",
		Kubeconfig: "/tmp/kc", BaseEnv: []string{"PATH=/usr/bin", "HOME=/root"}})
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Path != "/bin/worker" {
		t.Errorf("path = %s", cmd.Path)
	}
	if got, want := strings.Join(cmd.Args, " "), "serve --port=8080 --literal=$(MLA_PORT) --unknown=$(NOPE)"; got != want {
		t.Errorf("args = %q, want %q", got, want)
	}
	env := envOf(cmd)
	want := map[string]string{
		"PATH":                   "/usr/bin",
		v1alpha1.EnvPodName:      "w-1",
		v1alpha1.EnvPodNamespace: "ns",
		v1alpha1.EnvNodeName:     "h200-0",
		v1alpha1.EnvPodIP:        "127.20.1.1",
		"TEAM":                   "a",
		"UID":                    "uid-1",
		// Declared before MLA_POD_IP: left as written, as Kubernetes does.
		"ADDR":                   "$(MLA_POD_IP):8080",
		v1alpha1.EnvDevice:       "cpu",
		v1alpha1.EnvSimulatedGPU: "NVIDIA-H200:143771",
		"KUBECONFIG":             "/tmp/kc",
		"MEM_MI":                 "3072",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("env %s = %q, want %q", k, env[k], v)
		}
	}
	if n := strings.Count(strings.Join(cmd.Env, "\n"), v1alpha1.EnvDevice+"="); n != 1 {
		t.Errorf("%s set %d times", v1alpha1.EnvDevice, n)
	}
}

func TestBuildCommandErrors(t *testing.T) {
	gpuNode := builders.GPUNode("n", builders.L4, 4).Obj()
	cases := map[string]struct {
		node *corev1.Node
		env  corev1.EnvVar
		want string
	}{
		"node without GPU labels": {builders.Node("cpu").Obj(), corev1.EnvVar{Name: "A", Value: "b"}, "gpu.product"},
		"secret ref":              {gpuNode, corev1.EnvVar{Name: "S", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{Key: "k"}}}, "only fieldRef"},
		"unknown field":           {gpuNode, fieldEnv("X", "spec.hostname"), "unsupported fieldRef"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			pod := builders.Pod("ns", "p").Obj()
			pod.Spec.Containers[0].Env = []corev1.EnvVar{tc.env}
			_, err := BuildCommand(CommandInput{Pod: pod, Node: tc.node, WorkerBinary: "w"})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
