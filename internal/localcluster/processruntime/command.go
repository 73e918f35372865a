package processruntime

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/mla-operator/mla-operator/api/v1alpha1"
	"github.com/mla-operator/mla-operator/internal/localcluster/clusterconfig"
)

// Command is what the runtime runs for a worker container.
type Command struct {
	Path string
	Args []string
	Env  []string
}

// CommandInput is everything a worker's command line depends on.
type CommandInput struct {
	Pod  *corev1.Pod
	Node *corev1.Node
	// PodIP is the address assigned to the pod (set before it starts).
	PodIP string
	// WorkerBinary replaces the container image's entrypoint.
	WorkerBinary string
	// Kubeconfig lets the worker write its report on its own pod, as the
	// service account token would in a real cluster.
	Kubeconfig string
	// BaseEnv is inherited from the runtime (PATH, HOME, ...).
	BaseEnv []string
}

// BuildCommand turns the pod's first container into a worker command line
// the way a kubelet would: the container's env with downward-API fieldRefs
// resolved, $(VAR) references expanded in args, plus what only the local
// cluster knows: the CPU device, the node's simulated GPU and a kubeconfig.
//
// The image is not run: WorkerBinary stands in for its entrypoint, and
// command[1:] + args become the arguments.
func BuildCommand(in CommandInput) (Command, error) {
	if len(in.Pod.Spec.Containers) == 0 {
		return Command{}, fmt.Errorf("pod has no containers")
	}
	c := in.Pod.Spec.Containers[0]
	product, memMiB, err := clusterconfig.GPUOf(in.Node)
	if err != nil {
		return Command{}, err
	}
	env := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	for _, kv := range in.BaseEnv {
		if k, v, ok := strings.Cut(kv, "="); ok {
			set(k, v)
		}
	}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			if v, err = resolveEnvSource(in, c, e.ValueFrom); err != nil {
				return Command{}, fmt.Errorf("env %s: %w", e.Name, err)
			}
		} else {
			v = expand(v, env)
		}
		set(e.Name, v)
	}
	set(v1alpha1.EnvDevice, "cpu")
	set(v1alpha1.EnvSimulatedGPU, fmt.Sprintf("%s:%d", product, memMiB))
	set("KUBECONFIG", in.Kubeconfig)

	var args []string
	if len(c.Command) > 1 {
		args = append(args, c.Command[1:]...)
	}
	args = append(args, c.Args...)
	for i := range args {
		args[i] = expand(args[i], env)
	}
	cmd := Command{Path: in.WorkerBinary, Args: args}
	for _, k := range order {
		cmd.Env = append(cmd.Env, k+"="+env[k])
	}
	return cmd, nil
}

// BaseEnv is the part of the runtime's own environment a worker inherits.
func BaseEnv() []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "GOCOVERDIR", "GODEBUG", "GOMAXPROCS"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

func resolveEnvSource(in CommandInput, c corev1.Container, src *corev1.EnvVarSource) (string, error) {
	switch {
	case src.FieldRef != nil:
		return fieldValue(in, src.FieldRef.FieldPath)
	case src.ResourceFieldRef != nil:
		return resourceValue(c, src.ResourceFieldRef)
	default:
		return "", fmt.Errorf("only fieldRef and resourceFieldRef are supported by the local process runtime")
	}
}

func fieldValue(in CommandInput, path string) (string, error) {
	p := in.Pod
	switch path {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return string(p.UID), nil
	case "spec.nodeName":
		return p.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return in.PodIP, nil
	case "status.hostIP", "status.hostIPs":
		return HostIP, nil
	}
	for _, m := range []struct {
		prefix string
		values map[string]string
	}{{"metadata.labels", p.Labels}, {"metadata.annotations", p.Annotations}} {
		if rest, ok := strings.CutPrefix(path, m.prefix+"['"); ok {
			if key, ok := strings.CutSuffix(rest, "']"); ok {
				return m.values[key], nil
			}
		}
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

func resourceValue(c corev1.Container, ref *corev1.ResourceFieldSelector) (string, error) {
	kind, name, ok := strings.Cut(ref.Resource, ".")
	if !ok {
		return "", fmt.Errorf("unsupported resourceFieldRef %q", ref.Resource)
	}
	var list corev1.ResourceList
	switch kind {
	case "limits":
		list = c.Resources.Limits
	case "requests":
		list = c.Resources.Requests
	default:
		return "", fmt.Errorf("unsupported resourceFieldRef %q", ref.Resource)
	}
	q, ok := list[corev1.ResourceName(name)]
	if !ok {
		return "0", nil
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	// Round up, as the kubelet does.
	v := (q.MilliValue() + divisor.MilliValue() - 1) / divisor.MilliValue()
	return strconv.FormatInt(v, 10), nil
}

// expand replaces $(VAR) with env's VAR, leaves unknown references alone and
// turns $$ into $, as Kubernetes expands container args and env values.
func expand(s string, env map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}
