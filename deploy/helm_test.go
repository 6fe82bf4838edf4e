package deploy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

const (
	chart       = "helm/natter"
	namespace   = "natter"
	release     = "rt"
	kubeVersion = "1.33.0" // helm built by go install assumes 1.20 without a cluster
)

// kinds maps apiVersion/kind to the official type a rendered object must
// decode into. A kind not listed fails the test.
var kinds = map[string]func() any{
	"v1/ConfigMap":                       func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                          func() any { return &corev1.Secret{} },
	"v1/Service":                         func() any { return &corev1.Service{} },
	"apps/v1/Deployment":                 func() any { return &appsv1.Deployment{} },
	"apps/v1/StatefulSet":                func() any { return &appsv1.StatefulSet{} },
	"policy/v1/PodDisruptionBudget":      func() any { return &policyv1.PodDisruptionBudget{} },
	"networking.k8s.io/v1/Ingress":       func() any { return &networkingv1.Ingress{} },
	"networking.k8s.io/v1/NetworkPolicy": func() any { return &networkingv1.NetworkPolicy{} },
}

// manifest is a rendered chart, decoded.
type manifest struct {
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	services     map[string]*corev1.Service
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	pdbs         map[string]*policyv1.PodDisruptionBudget
	ingresses    map[string]*networkingv1.Ingress
}

// render runs helm template with extra arguments and decodes every object
// strictly.
func render(t *testing.T, args ...string) *manifest {
	t.Helper()
	out := run(t, "", nil, helm(t), append([]string{"template", release, chart,
		"--namespace", namespace, "--kube-version", kubeVersion}, args...)...)
	m, err := decode(out)
	if err != nil {
		t.Fatalf("helm template %s: %v", strings.Join(args, " "), err)
	}
	return m
}

// decode splits a multi-document YAML stream and decodes each object into
// its k8s.io/api type, rejecting unknown and duplicate fields.
func decode(stream string) (*manifest, error) {
	m := &manifest{
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
		services: map[string]*corev1.Service{}, deployments: map[string]*appsv1.Deployment{},
		statefulSets: map[string]*appsv1.StatefulSet{}, pdbs: map[string]*policyv1.PodDisruptionBudget{},
		ingresses: map[string]*networkingv1.Ingress{},
	}
	r := k8syaml.NewYAMLReader(bufio.NewReader(strings.NewReader(stream)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%w in\n%s", err, doc)
		}
		if string(bytes.TrimSpace(js)) == "null" {
			continue // a document of comments only
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(js, &tm); err != nil {
			return nil, err
		}
		key := tm.APIVersion + "/" + tm.Kind
		newObj, ok := kinds[key]
		if !ok {
			return nil, fmt.Errorf("unexpected kind %s in\n%s", key, doc)
		}
		obj := newObj()
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(obj); err != nil {
			return nil, fmt.Errorf("%s: %w in\n%s", key, err, doc)
		}
		meta := obj.(metav1.Object)
		name := meta.GetName()
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			return nil, fmt.Errorf("%s %q: %s", key, name, strings.Join(errs, "; "))
		}
		if meta.GetNamespace() != "" && meta.GetNamespace() != namespace {
			return nil, fmt.Errorf("%s %q: namespace %q", key, name, meta.GetNamespace())
		}
		var dup bool
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			_, dup = m.configMaps[name]
			m.configMaps[name] = o
		case *corev1.Secret:
			_, dup = m.secrets[name]
			m.secrets[name] = o
		case *corev1.Service:
			if errs := validation.IsDNS1035Label(name); len(errs) > 0 {
				return nil, fmt.Errorf("Service %q: %s", name, strings.Join(errs, "; "))
			}
			_, dup = m.services[name]
			m.services[name] = o
		case *appsv1.Deployment:
			_, dup = m.deployments[name]
			m.deployments[name] = o
		case *appsv1.StatefulSet:
			_, dup = m.statefulSets[name]
			m.statefulSets[name] = o
		case *policyv1.PodDisruptionBudget:
			_, dup = m.pdbs[name]
			m.pdbs[name] = o
		case *networkingv1.Ingress:
			_, dup = m.ingresses[name]
			m.ingresses[name] = o
		}
		if dup {
			return nil, fmt.Errorf("two %s named %q", key, name)
		}
	}
	return m, nil
}

// workload is a pod template with the name of what owns it.
type workload struct {
	name string
	spec *corev1.PodTemplateSpec
}

func (m *manifest) workloads() []workload {
	var ws []workload
	for n, d := range m.deployments {
		ws = append(ws, workload{"Deployment " + n, &d.Spec.Template})
	}
	for n, s := range m.statefulSets {
		ws = append(ws, workload{"StatefulSet " + n, &s.Spec.Template})
	}
	return ws
}

func TestHelmLint(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"--set", "ingress.enabled=true"},
	} {
		out := run(t, "", nil, helm(t), append([]string{"lint", "--strict", chart}, args...)...)
		if !strings.Contains(out, "0 chart(s) failed") {
			t.Fatalf("helm lint %v:\n%s", args, out)
		}
	}
}

func TestHelmDefaults(t *testing.T) {
	m := render(t)
	full := release + "-natter"
	if len(m.ingresses) != 0 || len(m.secrets) != 0 {
		t.Errorf("defaults render %d ingresses and %d secrets, want none", len(m.ingresses), len(m.secrets))
	}
	checkCommon(t, m)
	checkNATSStatefulSet(t, m, full)
	checkApps(t, m, full)
}

func TestHelmOverrides(t *testing.T) {
	env, seeds := roleKeys(t)
	pub := func(role string) string { return env["NATTER_"+strings.ToUpper(role)+"_NKEY"] }
	m := render(t,
		"--set", "ingress.enabled=true",
		"--set", "ingress.host=rt.example.com",
		"--set", "ingress.tlsSecretName=rt-tls",
		"--set", "edge.replicas=4",
		"--set", "edge.jwtSecret.secretName=natter-jwt",
		"--set", "edge.config.jwks-url=https://auth.example.com/jwks.json",
		"--set", "nkeys.create=true",
		"--set", "nkeys.edge.seed="+seeds["edge"], "--set", "nkeys.edge.publicKey="+pub("edge"),
		"--set", "nkeys.worker.seed="+seeds["worker"], "--set", "nkeys.worker.publicKey="+pub("worker"),
		"--set", "nkeys.auth.publicKey="+pub("auth"), "--set", "nkeys.service.publicKey="+pub("service"),
		"--set", "nats.jetstream.storage.storageClassName=fast-ssd",
	)
	full := release + "-natter"
	checkCommon(t, m)
	checkNATSStatefulSet(t, m, full)
	checkApps(t, m, full)

	if got := *m.deployments[full+"-edge"].Spec.Replicas; got != 4 {
		t.Errorf("edge replicas %d, want 4", got)
	}
	if sc := m.statefulSets[full+"-nats"].Spec.VolumeClaimTemplates[0].Spec.StorageClassName; sc == nil || *sc != "fast-ssd" {
		t.Errorf("storage class %v, want fast-ssd", sc)
	}

	// The Ingress routes to the edge Service's WebSocket port, with TLS
	// and long timeouts.
	ing, ok := m.ingresses[full+"-edge"]
	if !ok {
		t.Fatalf("no Ingress %s-edge", full)
	}
	if len(ing.Spec.TLS) != 1 || ing.Spec.TLS[0].SecretName != "rt-tls" || !slices.Equal(ing.Spec.TLS[0].Hosts, []string{"rt.example.com"}) {
		t.Errorf("ingress TLS %+v", ing.Spec.TLS)
	}
	for _, a := range []string{"proxy-read-timeout", "proxy-send-timeout"} {
		v := ing.Annotations["nginx.ingress.kubernetes.io/"+a]
		if n, err := strconv.Atoi(v); err != nil || n < 3600 {
			t.Errorf("ingress %s %q: idle WebSockets need an hour or more", a, v)
		}
	}
	for _, rule := range ing.Spec.Rules {
		if rule.Host != "rt.example.com" {
			t.Errorf("ingress host %q", rule.Host)
		}
		for _, p := range rule.HTTP.Paths {
			svc, ok := m.services[p.Backend.Service.Name]
			if !ok {
				t.Fatalf("ingress backend Service %q does not exist", p.Backend.Service.Name)
			}
			if !slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Name == p.Backend.Service.Port.Name }) {
				t.Errorf("ingress backend port %q is not a port of Service %s", p.Backend.Service.Port.Name, svc.Name)
			}
		}
	}

	// The Secret has every key the pods read, and the public keys belong
	// to the seeds.
	sec, ok := m.secrets["natter-nkeys"]
	if !ok {
		t.Fatal("nkeys.create=true renders no Secret natter-nkeys")
	}
	for _, ref := range secretRefs(m) {
		if ref.name != "natter-nkeys" {
			continue
		}
		if _, ok := sec.StringData[ref.key]; !ok {
			t.Errorf("%s reads key %q, not in the Secret", ref.from, ref.key)
		}
	}
	for _, role := range []string{"edge", "worker"} {
		kp, err := nkeys.FromSeed([]byte(sec.StringData[role+".nk"]))
		if err != nil {
			t.Fatalf("%s.nk: %v", role, err)
		}
		if p, _ := kp.PublicKey(); p != sec.StringData[role+".pub"] {
			t.Errorf("%s.pub is not the public key of %s.nk", role, role)
		}
	}

	// The JWT secret reaches the edge as NATTER_JWT_SECRET.
	edge := m.deployments[full+"-edge"].Spec.Template.Spec.Containers[0]
	if !slices.ContainsFunc(edge.Env, func(e corev1.EnvVar) bool {
		return e.Name == "NATTER_JWT_SECRET" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == "natter-jwt"
	}) {
		t.Error("edge.jwtSecret.secretName does not reach the edge as NATTER_JWT_SECRET")
	}
}

// TestHelmRequiresSeeds checks that nkeys.create without the keys fails
// at render time rather than making pods that cannot connect.
func TestHelmRequiresSeeds(t *testing.T) {
	cmd := helmCmd(t, "template", release, chart, "--kube-version", kubeVersion, "--set", "nkeys.create=true")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "nkeys.edge.seed is required") {
		t.Fatalf("nkeys.create=true without seeds: err %v\n%s", err, out)
	}
}

// checkCommon checks what holds for every object of a render.
func checkCommon(t *testing.T, m *manifest) {
	t.Helper()
	ws := m.workloads()
	if len(ws) != 3 {
		t.Fatalf("%d workloads, want the NATS StatefulSet and the edge and worker Deployments", len(ws))
	}
	for _, w := range ws {
		spec := &w.spec.Spec
		// Non-root, no privilege escalation, no API token.
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
			t.Errorf("%s: pod not forced non-root: %+v", w.name, psc)
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Errorf("%s: mounts a service account token it does not use", w.name)
		}
		for _, c := range spec.Containers {
			where := w.name + " container " + c.Name
			if c.Image == "" || !strings.Contains(c.Image, ":") || strings.HasSuffix(c.Image, ":") {
				t.Errorf("%s: image %q without a tag", where, c.Image)
			}
			sc := c.SecurityContext
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
				t.Errorf("%s: security context %+v", where, sc)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("%s: resources %+v: want CPU and memory requests and a memory limit", where, c.Resources)
			}
			if c.ReadinessProbe == nil || c.LivenessProbe == nil {
				t.Errorf("%s: no readiness or liveness probe", where)
			}
			for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
				if p != nil && p.HTTPGet != nil {
					if _, ok := containerPort(&c, p.HTTPGet.Port); !ok {
						t.Errorf("%s: probe port %s is no port of the container", where, p.HTTPGet.Port.String())
					}
				}
			}
			for _, vm := range c.VolumeMounts {
				if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == vm.Name }) &&
					!slices.ContainsFunc(statefulClaims(m), func(n string) bool { return n == vm.Name }) {
					t.Errorf("%s: mounts volume %q, which does not exist", where, vm.Name)
				}
			}
		}
		// Referenced ConfigMaps exist (Secrets are the operator's).
		for _, v := range spec.Volumes {
			if v.ConfigMap != nil {
				if _, ok := m.configMaps[v.ConfigMap.Name]; !ok {
					t.Errorf("%s: volume %q: ConfigMap %q does not exist", w.name, v.Name, v.ConfigMap.Name)
				}
			}
		}
	}

	// Every Service and PodDisruptionBudget selects the pods of exactly one
	// workload, and a Service's target ports are named ports of its pods.
	selected := func(sel labels.Selector) []workload {
		var out []workload
		for _, w := range ws {
			if sel.Matches(labels.Set(w.spec.Labels)) {
				out = append(out, w)
			}
		}
		return out
	}
	for n, s := range m.services {
		got := selected(labels.SelectorFromSet(s.Spec.Selector))
		if len(s.Spec.Selector) == 0 || len(got) != 1 {
			t.Errorf("Service %s selects %d workloads, want 1", n, len(got))
			continue
		}
		for _, p := range s.Spec.Ports {
			c := got[0].spec.Spec.Containers[0]
			if _, ok := containerPort(&c, p.TargetPort); !ok {
				t.Errorf("Service %s port %s: target %s is no port of %s", n, p.Name, p.TargetPort.String(), got[0].name)
			}
		}
	}
	for n, p := range m.pdbs {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil {
			t.Fatalf("PDB %s: %v", n, err)
		}
		if got := selected(sel); sel.Empty() || len(got) != 1 {
			t.Errorf("PDB %s selects %d workloads, want 1", n, len(got))
		}
		if p.Spec.MaxUnavailable == nil || p.Spec.MaxUnavailable.IntValue() != 1 {
			t.Errorf("PDB %s: maxUnavailable %v, want 1", n, p.Spec.MaxUnavailable)
		}
	}
	if len(m.pdbs) != 3 {
		t.Errorf("%d PDBs, want NATS, edge and worker", len(m.pdbs))
	}
	// Deployments' selectors match their own pods.
	for n, d := range m.deployments {
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("Deployment %s: selector does not match its pods (%v)", n, err)
		}
	}
	for n, s := range m.statefulSets {
		sel, err := metav1.LabelSelectorAsSelector(s.Spec.Selector)
		if err != nil || !sel.Matches(labels.Set(s.Spec.Template.Labels)) {
			t.Errorf("StatefulSet %s: selector does not match its pods (%v)", n, err)
		}
	}
}

func statefulClaims(m *manifest) []string {
	var out []string
	for _, s := range m.statefulSets {
		for _, c := range s.Spec.VolumeClaimTemplates {
			out = append(out, c.Name)
		}
	}
	return out
}

// containerPort resolves a named or numbered port of a container.
func containerPort(c *corev1.Container, p intstr.IntOrString) (int32, bool) {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// checkNATSStatefulSet checks the cluster: 3 replicas behind a headless
// Service, JetStream on a PVC, and a configuration that nats-server loads
// with three routes to the pods' DNS names.
func checkNATSStatefulSet(t *testing.T, m *manifest, full string) {
	t.Helper()
	sts, ok := m.statefulSets[full+"-nats"]
	if !ok {
		t.Fatalf("no StatefulSet %s-nats", full)
	}
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 {
		t.Errorf("NATS replicas %v, want 3", sts.Spec.Replicas)
	}
	if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("NATS podManagementPolicy %q: the nodes must start together for a JetStream quorum", sts.Spec.PodManagementPolicy)
	}
	headless, ok := m.services[sts.Spec.ServiceName]
	if !ok || headless.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Fatalf("StatefulSet serviceName %q is not a headless Service", sts.Spec.ServiceName)
	}
	if len(sts.Spec.VolumeClaimTemplates) != 1 || sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests.Storage().IsZero() {
		t.Fatalf("NATS volumeClaimTemplates %+v: want one with a storage request", sts.Spec.VolumeClaimTemplates)
	}
	claim := sts.Spec.VolumeClaimTemplates[0].Name
	c := sts.Spec.Template.Spec.Containers[0]
	checkNATSImage(t, "chart", c.Image)
	dataDir := ""
	for _, vm := range c.VolumeMounts {
		if vm.Name == claim {
			dataDir = vm.MountPath
		}
	}
	if dataDir == "" {
		t.Fatalf("the NATS container does not mount the claim %q", claim)
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Exec == nil {
		t.Error("NATS has no lame-duck preStop")
	}

	// Load the rendered configuration as the pod sees it.
	var cm *corev1.ConfigMap
	for _, v := range sts.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil {
			cm = m.configMaps[v.ConfigMap.Name]
		}
	}
	if cm == nil {
		t.Fatal("NATS mounts no ConfigMap")
	}
	dir := t.TempDir()
	for name, body := range cm.Data {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(c.Command, []string{"nats-server", "--config", "/etc/nats/nats.conf"}) {
		t.Errorf("NATS command %q", c.Command)
	}
	// The public keys come from the Secret, the server name from the pod.
	env, _ := roleKeys(t)
	for name := range env {
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == name && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil
		}) {
			t.Errorf("NATS env %s does not come from a Secret", name)
		}
	}
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name"
	}) {
		t.Error("NATS env POD_NAME is not the pod's name")
	}
	env["POD_NAME"] = full + "-nats-1"
	opts := loadNATS(t, filepath.Join(dir, "nats.conf"), env)
	var routes []string
	for i := range 3 {
		routes = append(routes, fmt.Sprintf("nats://%s-%d.%s.%s.svc.cluster.local:6222", sts.Name, i, headless.Name, namespace))
	}
	checkNATSNode(t, "chart nats.conf", opts, env, dataDir+"/jetstream", routes)
	if opts.ServerName != full+"-nats-1" {
		t.Errorf("server_name %q, want the pod name", opts.ServerName)
	}
	if opts.JetStreamMaxStore <= 0 {
		t.Error("no JetStream file store limit")
	}
	for _, port := range []int{opts.Port, opts.Cluster.Port, opts.HTTPPort} {
		if _, ok := containerPort(&c, intstr.FromInt32(int32(port))); !ok {
			t.Errorf("NATS listens on %d, not a container port", port)
		}
	}
	if p := c.ReadinessProbe.HTTPGet; p == nil || !strings.HasPrefix(p.Path, "/healthz") {
		t.Errorf("NATS readiness probe %+v: want /healthz", p)
	}
}

// checkApps checks the edge and worker Deployments: probes on the admin
// port, configuration that names real flags, shutdown timing.
func checkApps(t *testing.T, m *manifest, full string) {
	t.Helper()
	for _, command := range []string{"edge", "worker"} {
		d, ok := m.deployments[full+"-"+command]
		if !ok {
			t.Fatalf("no Deployment %s-%s", full, command)
		}
		if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
			t.Errorf("%s replicas %v, want at least 2", command, d.Spec.Replicas)
		}
		pod := d.Spec.Template.Spec
		if psc := pod.SecurityContext; psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
			t.Errorf("%s: runAsUser %v, want the image's 65532", command, psc.RunAsUser)
		}
		c := pod.Containers[0]
		env := map[string]string{}
		var names []string
		for _, e := range c.Env {
			env[e.Name] = e.Value
			names = append(names, e.Name)
		}
		checkEnvNames(t, "Deployment "+d.Name, command, names)

		// Probes: /readyz and /healthz on the port of --admin-listen.
		admin, ok := strings.CutPrefix(env["NATTER_ADMIN_LISTEN"], ":")
		if !ok {
			t.Fatalf("%s: NATTER_ADMIN_LISTEN %q, want :port", command, env["NATTER_ADMIN_LISTEN"])
		}
		for _, p := range []struct {
			probe *corev1.Probe
			path  string
		}{{c.ReadinessProbe, "/readyz"}, {c.LivenessProbe, "/healthz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path {
				t.Errorf("%s: probe %+v, want GET %s", command, p.probe, p.path)
				continue
			}
			port, _ := containerPort(&c, p.probe.HTTPGet.Port)
			if fmt.Sprint(port) != admin {
				t.Errorf("%s: %s probe on port %d, admin listens on %s", command, p.path, port, admin)
			}
		}
		if env["NATTER_NATS"] != "nats://"+full+"-nats:4222" {
			t.Errorf("%s: NATTER_NATS %q", command, env["NATTER_NATS"])
		} else if _, ok := m.services[full+"-nats"]; !ok {
			t.Errorf("%s: NATTER_NATS names no Service", command)
		}

		// The --config file: every key a flag; the file mounted where
		// NATTER_CONFIG points.
		cm, ok := m.configMaps[full+"-"+command]
		if !ok {
			t.Fatalf("no ConfigMap %s-%s", full, command)
		}
		var cfg map[string]any
		if err := yaml.UnmarshalStrict([]byte(cm.Data[command+".yaml"]), &cfg); err != nil {
			t.Fatalf("%s config: %v", command, err)
		}
		var keys []string
		for k := range cfg {
			keys = append(keys, "NATTER_"+strings.ToUpper(strings.ReplaceAll(k, "-", "_")))
		}
		checkEnvNames(t, "ConfigMap "+cm.Name, command, keys)
		if !slices.ContainsFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.MountPath == env["NATTER_CONFIG"] }) {
			t.Errorf("%s: nothing mounted at NATTER_CONFIG %q", command, env["NATTER_CONFIG"])
		}
		// The nkey seed file is the one mounted from the Secret.
		seed := env["NATTER_NATS_NKEY"]
		if !slices.ContainsFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool {
			return filepath.Dir(seed) == vm.MountPath && slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool {
				return v.Name == vm.Name && v.Secret != nil && slices.ContainsFunc(v.Secret.Items, func(k corev1.KeyToPath) bool { return k.Path == filepath.Base(seed) })
			})
		}) {
			t.Errorf("%s: NATTER_NATS_NKEY %q is not a file of the nkeys Secret", command, seed)
		}

		grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
		switch command {
		case "edge":
			if _, ok := containerPort(&c, intstr.FromString("websocket")); !ok {
				t.Error("edge: no websocket port")
			}
			if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds < 1 {
				t.Fatal("edge: no preStop sleep")
			}
			sleep := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
			shutdown := duration(t, cfg, "shutdown-timeout", 10*time.Second) + duration(t, cfg, "drain-delay", 0)
			if grace <= sleep+shutdown {
				t.Errorf("edge: terminationGracePeriodSeconds %v <= preStop %v + shutdown %v", grace, sleep, shutdown)
			}
			for _, k := range []string{"presence-replicas", "durable-replicas"} {
				if cfg[k] != 3.0 {
					t.Errorf("edge: %s %v, want 3 on a 3-node cluster", k, cfg[k])
				}
			}
			if u := d.Spec.Strategy.RollingUpdate; u == nil || u.MaxUnavailable == nil || u.MaxUnavailable.IntValue() != 0 {
				t.Error("edge: a rolling update may drop capacity (maxUnavailable != 0)")
			}
		case "worker":
			if drain := duration(t, cfg, "drain-timeout", 10*time.Second); grace <= drain {
				t.Errorf("worker: terminationGracePeriodSeconds %v <= drain-timeout %v", grace, drain)
			}
		}
	}
	// The edge Service carries WebSocket traffic to the edges.
	svc, ok := m.services[full+"-edge"]
	if !ok || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.StrVal != "websocket" {
		t.Errorf("edge Service %+v: want one port to websocket", svc)
	}
}

// duration reads a duration from a config file's map, or def.
func duration(t *testing.T, cfg map[string]any, key string, def time.Duration) time.Duration {
	t.Helper()
	v, ok := cfg[key]
	if !ok {
		return def
	}
	d, err := time.ParseDuration(fmt.Sprint(v))
	if err != nil {
		t.Fatalf("config %s: %v", key, err)
	}
	return d
}

// secretRef is one read of a Secret key.
type secretRef struct{ from, name, key string }

// secretRefs lists every Secret key the pods read, by volume item or env.
func secretRefs(m *manifest) []secretRef {
	var refs []secretRef
	for _, w := range m.workloads() {
		for _, v := range w.spec.Spec.Volumes {
			if v.Secret != nil {
				for _, it := range v.Secret.Items {
					refs = append(refs, secretRef{w.name, v.Secret.SecretName, it.Key})
				}
			}
		}
		for _, c := range w.spec.Spec.Containers {
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					refs = append(refs, secretRef{w.name, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key})
				}
			}
		}
	}
	return refs
}
