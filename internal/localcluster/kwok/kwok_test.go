package kwok

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/mla-operator/mla-operator/config/local"
	"github.com/mla-operator/mla-operator/internal/localcluster/clusterconfig"
)

func TestArgsKeepKwokOnLoopbackAndOnOurNodes(t *testing.T) {
	args := strings.Join(Args(Options{Kubeconfig: "/k", PodCIDRs: clusterconfig.PodCIDRs{Base: 42}}, "/c.yaml"), " ")
	for _, want := range []string{"--kubeconfig=/k", "--config=/c.yaml", "--cidr=127.42.0.0/24", "--node-ip=127.0.0.1",
		"--manage-nodes-with-label-selector=" + clusterconfig.LabelSimulated + "=true"} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
}

// Every pod stage of the default configuration must leave worker pods to
// the process runtime; the scale configuration must not.
func TestPodStagesExcludeWorkersOnlyByDefault(t *testing.T) {
	const exclusion = `.metadata.labels["app.kubernetes.io/component"]`
	for name, tc := range map[string]struct {
		config   []byte
		excluded bool
	}{"kwok.yaml": {local.KwokYAML, true}, "kwok-all-pods.yaml": {local.KwokAllPodsYAML, false}} {
		stages := 0
		for _, doc := range strings.Split(string(tc.config), "\n---\n") {
			var obj struct {
				Kind string
				Spec struct {
					ResourceRef struct{ Kind string } `json:"resourceRef"`
					Selector    struct {
						MatchExpressions []struct {
							Key      string
							Operator string
							Values   []string
						} `json:"matchExpressions"`
					}
				}
			}
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if obj.Kind != "Stage" || obj.Spec.ResourceRef.Kind != "Pod" {
				continue
			}
			stages++
			excluded := false
			for _, e := range obj.Spec.Selector.MatchExpressions {
				if e.Key == exclusion && e.Operator == "NotIn" && len(e.Values) == 1 && e.Values[0] == "worker" {
					excluded = true
				}
			}
			if excluded != tc.excluded {
				t.Errorf("%s: a pod stage excludes workers = %v, want %v", name, excluded, tc.excluded)
			}
		}
		if stages < 2 {
			t.Errorf("%s: %d pod stages, want ready and delete", name, stages)
		}
	}
}
