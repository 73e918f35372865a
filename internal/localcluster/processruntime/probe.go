package processruntime

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ReadinessCheck is a container's HTTP readiness probe resolved against its
// pod IP.
type ReadinessCheck struct {
	URL              string
	Period           time.Duration
	Timeout          time.Duration
	FailureThreshold int32
	SuccessThreshold int32
}

// MaxProbePeriod caps the probe period: a local cluster is for watching
// things happen, so readiness follows the worker within 2 s.
const MaxProbePeriod = 2 * time.Second

// Readiness resolves the first container's readiness probe. A container
// without one is ready once it runs (ok false); probes other than httpGet
// are not supported.
func Readiness(c corev1.Container, podIP string) (check ReadinessCheck, ok bool, err error) {
	p := c.ReadinessProbe
	if p == nil {
		return ReadinessCheck{}, false, nil
	}
	if p.HTTPGet == nil {
		return ReadinessCheck{}, false, fmt.Errorf("container %s: only httpGet readiness probes are supported by the local process runtime", c.Name)
	}
	port, err := resolvePort(c, p.HTTPGet.Port)
	if err != nil {
		return ReadinessCheck{}, false, err
	}
	host := p.HTTPGet.Host
	if host == "" {
		host = podIP
	}
	scheme := "http"
	if p.HTTPGet.Scheme == corev1.URISchemeHTTPS {
		return ReadinessCheck{}, false, fmt.Errorf("container %s: https readiness probes are not supported by the local process runtime", c.Name)
	}
	path := p.HTTPGet.Path
	if path == "" || path[0] != '/' {
		path = "/" + path
	}
	check = ReadinessCheck{
		URL:              scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port)) + path,
		Period:           min(orDefault(p.PeriodSeconds, 10), MaxProbePeriod),
		Timeout:          orDefault(p.TimeoutSeconds, 1),
		FailureThreshold: max(p.FailureThreshold, 1),
		SuccessThreshold: max(p.SuccessThreshold, 1),
	}
	return check, true, nil
}

func orDefault(seconds, def int32) time.Duration {
	if seconds <= 0 {
		seconds = def
	}
	return time.Duration(seconds) * time.Second
}

func resolvePort(c corev1.Container, port intstr.IntOrString) (int, error) {
	if port.Type == intstr.Int {
		if port.IntVal <= 0 || port.IntVal > 65535 {
			return 0, fmt.Errorf("container %s: readiness probe port %d out of range", c.Name, port.IntVal)
		}
		return int(port.IntVal), nil
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s: readiness probe names port %q, which the container does not declare", c.Name, port.StrVal)
}

// probe is one readiness probe, ok for any 2xx or 3xx answer as the kubelet
// counts it.
func probe(ctx context.Context, client *http.Client, check ReadinessCheck) bool {
	ctx, cancel := context.WithTimeout(ctx, check.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, check.URL, nil)
	if err != nil {
		return false
	}
	req.Header.Set("User-Agent", "mla-local-probe")
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}
