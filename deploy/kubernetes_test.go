package deploy

import (
	"encoding/json"

	"net"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/go-routing-service/routingservice/internal/config"
)

// The Kubernetes objects, as far as the checks below read them.
type (
	object struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Data map[string]string `json:"data"`
		Spec json.RawMessage   `json:"spec"`
	}
	deploymentSpec struct {
		Replicas int `json:"replicas"`
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Spec podSpec `json:"spec"`
		} `json:"template"`
	}
	podSpec struct {
		TerminationGracePeriodSeconds *int64      `json:"terminationGracePeriodSeconds"`
		Containers                    []container `json:"containers"`
		Volumes                       []struct {
			Name      string `json:"name"`
			ConfigMap *struct {
				Name string `json:"name"`
			} `json:"configMap"`
			Secret *struct {
				SecretName string `json:"secretName"`
			} `json:"secret"`
			EmptyDir *struct{} `json:"emptyDir"`
		} `json:"volumes"`
	}
	container struct {
		Name  string   `json:"name"`
		Image string   `json:"image"`
		Args  []string `json:"args"`
		Env   []struct {
			Name      string `json:"name"`
			Value     string `json:"value"`
			ValueFrom *struct {
				FieldRef *struct {
					FieldPath string `json:"fieldPath"`
				} `json:"fieldRef"`
				SecretKeyRef *struct {
					Name string `json:"name"`
					Key  string `json:"key"`
				} `json:"secretKeyRef"`
			} `json:"valueFrom"`
		} `json:"env"`
		Ports []struct {
			Name          string `json:"name"`
			ContainerPort int    `json:"containerPort"`
		} `json:"ports"`
		StartupProbe   *probe `json:"startupProbe"`
		LivenessProbe  *probe `json:"livenessProbe"`
		ReadinessProbe *probe `json:"readinessProbe"`
		Lifecycle      *struct {
			PreStop *struct {
				Sleep *struct {
					Seconds int64 `json:"seconds"`
				} `json:"sleep"`
			} `json:"preStop"`
		} `json:"lifecycle"`
		VolumeMounts []struct {
			Name      string `json:"name"`
			MountPath string `json:"mountPath"`
			ReadOnly  bool   `json:"readOnly"`
		} `json:"volumeMounts"`
	}
	probe struct {
		HTTPGet *struct {
			Path string `json:"path"`
			Port any    `json:"port"`
		} `json:"httpGet"`
	}
	serviceSpec struct {
		Selector map[string]string `json:"selector"`
		Ports    []struct {
			Name       string `json:"name"`
			Port       int    `json:"port"`
			TargetPort any    `json:"targetPort"`
		} `json:"ports"`
	}
	pdbSpec struct {
		MaxUnavailable any `json:"maxUnavailable"`
		MinAvailable   any `json:"minAvailable"`
		Selector       struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
	}
	hpaSpec struct {
		ScaleTargetRef struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicas int `json:"minReplicas"`
		MaxReplicas int `json:"maxReplicas"`
	}
)

// render builds a kustomization with the kustomize library, as
// `kubectl kustomize` does.
func render(t *testing.T, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	var objs []object
	for _, r := range rm.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var o object
		if err := json.Unmarshal(b, &o); err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o)
	}
	return objs
}

func spec[T any](t *testing.T, o object) T {
	t.Helper()
	var s T
	if err := json.Unmarshal(o.Spec, &s); err != nil {
		t.Fatalf("%s %s: %v", o.Kind, o.Metadata.Name, err)
	}
	return s
}

// imageEnv is the environment the Dockerfile's runtime stage sets.
func imageEnv(t *testing.T) map[string]string {
	t.Helper()
	stages := parseDockerfile(t, filepath.Join(repoRoot, "Dockerfile"))
	env := map[string]string{}
	for _, in := range stages[len(stages)-1].instrs {
		if in.cmd == "ENV" {
			for _, kv := range shellWords(t, in.args, env) {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
		}
	}
	return env
}

// secretEnv are the variables that hold secrets: they must come from a
// Secret, never from the manifest. The values stand in for the Secret's.
var secretEnv = map[string]string{
	"JWT_SECRET":     "an-hs256-secret-of-at-least-32-bytes",
	"DATABASE_URL":   "postgres://routing@postgres:5432/routing?sslmode=verify-full",
	"REDIS_PASSWORD": "redis-password",
}

// The base and the Google Cloud overlay render; each Deployment's pods get
// a configuration (the mounted ConfigMap, the image's and the pod's
// environment) that passes the service's own checks, and the objects agree
// with it: roles, ports, probes on the operations listener, instance ids,
// secrets, mounted files, the data dir, grace periods, Services, disruption
// budgets and autoscalers.
func TestKubernetes(t *testing.T) {
	for _, dir := range []string{"kubernetes/base", "kubernetes/overlays/gcp"} {
		t.Run(dir, func(t *testing.T) { checkKustomization(t, dir) })
	}
}

func checkKustomization(t *testing.T, dir string) {
	objs := render(t, dir)
	byKind := map[string][]object{}
	for _, o := range objs {
		byKind[o.Kind] = append(byKind[o.Kind], o)
	}
	if len(byKind["ConfigMap"]) != 1 {
		t.Fatalf("want one ConfigMap, got %d", len(byKind["ConfigMap"]))
	}
	cm := byKind["ConfigMap"][0]
	roles := map[string]bool{}
	var realtimeCfg *config.Config
	deployments := byKind["Deployment"]
	if len(deployments) != 2 {
		t.Fatalf("want 2 Deployments (api+pipeline, realtime), got %d", len(deployments))
	}
	for _, d := range deployments {
		ds := spec[deploymentSpec](t, d)
		cfg, ops := checkPod(t, d.Metadata.Name, ds.Template.Spec, cm)
		if cfg.Has(config.RoleRealtime) {
			realtimeCfg = &cfg
		}
		for _, r := range cfg.Roles {
			if roles[r] {
				t.Errorf("role %s runs in two Deployments", r)
			}
			roles[r] = true
		}
		labels := ds.Template.Metadata.Labels
		if !matches(ds.Selector.MatchLabels, labels) {
			t.Errorf("%s: selector %v does not select its pods %v", d.Metadata.Name, ds.Selector.MatchLabels, labels)
		}
		// A Service per public listener of the pods, none for the operations port.
		want := map[string]bool{}
		if cfg.Has(config.RoleAPI) {
			want["http"] = true
		}
		if cfg.Has(config.RoleRealtime) {
			want["ws"] = true
		}
		got := map[string]bool{}
		for _, s := range byKind["Service"] {
			ss := spec[serviceSpec](t, s)
			if !matches(ss.Selector, labels) {
				continue
			}
			for _, p := range ss.Ports {
				if p.TargetPort == ops || p.TargetPort == "ops" {
					t.Errorf("Service %s exposes the operations port", s.Metadata.Name)
				}
				name, _ := p.TargetPort.(string)
				got[name] = true
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: Services target ports %v, want %v", d.Metadata.Name, got, want)
		}
		var hpaMin int
		for _, h := range byKind["HorizontalPodAutoscaler"] {
			hs := spec[hpaSpec](t, h)
			if hs.ScaleTargetRef.Kind == "Deployment" && hs.ScaleTargetRef.Name == d.Metadata.Name {
				hpaMin = hs.MinReplicas
				if hs.MaxReplicas < hs.MinReplicas {
					t.Errorf("HPA %s: maxReplicas below minReplicas", h.Metadata.Name)
				}
			}
		}
		if hpaMin < 2 {
			t.Errorf("%s: no HorizontalPodAutoscaler keeping at least 2 replicas", d.Metadata.Name)
		}
		var pdb bool
		for _, p := range byKind["PodDisruptionBudget"] {
			ps := spec[pdbSpec](t, p)
			if matches(ps.Selector.MatchLabels, labels) {
				pdb = true
				if n, ok := ps.MaxUnavailable.(float64); !ok || int(n) < 1 || int(n) >= hpaMin {
					t.Errorf("PDB %s: maxUnavailable %v: want a number from 1 to below the minimum replicas %d", p.Metadata.Name, ps.MaxUnavailable, hpaMin)
				}
			}
		}
		if !pdb {
			t.Errorf("%s: no PodDisruptionBudget", d.Metadata.Name)
		}
	}
	for _, r := range []string{config.RoleAPI, config.RolePipeline, config.RoleRealtime} {
		if !roles[r] {
			t.Errorf("no Deployment runs the %s role", r)
		}
	}
	if realtimeCfg != nil {
		checkIngressHosts(t, byKind, *realtimeCfg)
	}
}

// checkPod checks one Deployment's pod against the configuration it gets,
// and returns that configuration and the operations port.
func checkPod(t *testing.T, name string, ps podSpec, cm object) (config.Config, int) {
	t.Helper()
	if len(ps.Containers) != 1 {
		t.Fatalf("%s: want one container, got %d", name, len(ps.Containers))
	}
	c := ps.Containers[0]
	if !slices.Equal(c.Args, []string{"serve"}) {
		t.Errorf("%s: args %q, want [serve]", name, c.Args)
	}

	// The environment: the image's, then the pod's.
	env := imageEnv(t)
	for _, e := range c.Env {
		_, secret := secretEnv[e.Name]
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			env[e.Name] = secretEnv[e.Name]
			if !secret {
				t.Errorf("%s: %s from a Secret is not a secret of the service", name, e.Name)
			}
		case secret:
			t.Errorf("%s: %s must come from a Secret (secretKeyRef)", name, e.Name)
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			env[e.Name] = name + "-7c9d8b6f5-x2x4q" // a pod name
		case e.ValueFrom != nil:
			t.Errorf("%s: %s: unexpected valueFrom", name, e.Name)
		default:
			env[e.Name] = e.Value
		}
	}
	for _, e := range c.Env {
		if e.Name == "ROUTING_INSTANCE_ID" && (e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name") {
			t.Errorf("%s: ROUTING_INSTANCE_ID must be the pod name (fieldRef metadata.name)", name)
		}
	}
	if _, ok := env["ROUTING_INSTANCE_ID"]; !ok {
		t.Errorf("%s: ROUTING_INSTANCE_ID is not set", name)
	}

	// The mounts.
	mounts := map[string]string{} // mount path -> volume
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	volumeOf := func(p string) (string, string) { // volume, mount path
		for mp, v := range mounts {
			if p == mp || strings.HasPrefix(p, strings.TrimSuffix(mp, "/")+"/") {
				return v, mp
			}
		}
		return "", ""
	}
	cfgPath := env["ROUTING_CONFIG"]
	vol, mp := volumeOf(cfgPath)
	var fromConfigMap bool
	for _, v := range ps.Volumes {
		if v.Name == vol && v.ConfigMap != nil && v.ConfigMap.Name == cm.Metadata.Name {
			fromConfigMap = true
		}
	}
	if !fromConfigMap {
		t.Fatalf("%s: ROUTING_CONFIG=%q is not a file of the ConfigMap %s", name, cfgPath, cm.Metadata.Name)
	}
	raw, ok := cm.Data[strings.TrimPrefix(cfgPath, mp+"/")]
	if !ok {
		t.Fatalf("%s: the ConfigMap has no %s", name, path.Base(cfgPath))
	}

	// The configuration the service gets, through its own checks.
	cfg, ops := loadConfig(t, raw, env)

	// Ports and probes.
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	wantPorts := map[string]int{"ops": ops}
	if cfg.Has(config.RoleAPI) {
		wantPorts["http"] = port(t, cfg.API.Listen)
	}
	if cfg.Has(config.RoleRealtime) {
		wantPorts["ws"] = port(t, cfg.Realtime.Listen)
	}
	if !reflect.DeepEqual(ports, wantPorts) {
		t.Errorf("%s: container ports %v, want %v (from the configuration)", name, ports, wantPorts)
	}
	for kind, pr := range map[string]*probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		want := "/healthz"
		if kind == "readiness" {
			want = "/readyz"
		}
		if pr == nil || pr.HTTPGet == nil {
			t.Errorf("%s: no %s probe", name, kind)
			continue
		}
		if pr.HTTPGet.Path != want || (pr.HTTPGet.Port != "ops" && pr.HTTPGet.Port != float64(ops)) {
			t.Errorf("%s: %s probe %s on port %v, want %s on the operations port %d", name, kind, pr.HTTPGet.Path, pr.HTTPGet.Port, want, ops)
		}
	}

	// Grace: the preStop pause and the whole drain fit in it.
	var preStop time.Duration
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		preStop = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	if ps.TerminationGracePeriodSeconds == nil {
		t.Errorf("%s: terminationGracePeriodSeconds unset (30s)", name)
	} else if grace := time.Duration(*ps.TerminationGracePeriodSeconds) * time.Second; grace <= preStop+cfg.ShutdownTimeout {
		t.Errorf("%s: terminationGracePeriodSeconds %v not above preStop %v + shutdown_timeout %v", name, grace, preStop, cfg.ShutdownTimeout)
	}

	// Files: the data dir is a writable volume, every file the
	// configuration names is in a Secret volume.
	volumes := map[string]int{}
	for i, v := range ps.Volumes {
		volumes[v.Name] = i
	}
	// The data dir is on a writable volume; not an emptyDir's own
	// directory, which Kubernetes makes open to everyone (0777, owned by
	// root), so the service, which tightens its data dir to its own user or
	// refuses it, would refuse to start.
	if v, mp := volumeOf(cfg.DataDir); v == "" {
		t.Errorf("%s: data_dir %s is not on a mounted volume", name, cfg.DataDir)
	} else if i, ok := volumes[v]; ok && ps.Volumes[i].EmptyDir != nil && mp == cfg.DataDir {
		t.Errorf("%s: data_dir %s is the emptyDir %s itself (mode 0777, owned by root): use a directory inside it", name, cfg.DataDir, v)
	}
	for key, f := range referencedFiles(cfg) {
		v, _ := volumeOf(f)
		if i, ok := volumes[v]; !ok || ps.Volumes[i].Secret == nil {
			t.Errorf("%s: %s (%s) is not in a mounted Secret", name, key, f)
		}
	}
	return cfg, ops
}

// referencedFiles are the files a configuration names, by key.
func referencedFiles(cfg config.Config) map[string]string {
	files := map[string]string{}
	add := func(key, f string, on bool) {
		if on && f != "" {
			files[key] = f
		}
	}
	add("push.webpush.vapid_private_key_file", cfg.Push.WebPush.VAPIDPrivateKeyFile, cfg.Push.WebPush.Enabled)
	add("push.fcm.credentials_file", cfg.Push.FCM.CredentialsFile, cfg.Push.FCM.Enabled)
	add("push.apns.key_file", cfg.Push.APNs.KeyFile, cfg.Push.APNs.Enabled)
	add("push.ca_file", cfg.Push.CAFile, true)
	add("bus.nats.credentials_file", cfg.Bus.NATS.CredentialsFile, cfg.Bus.Type == "nats")
	add("bus.pubsub.credentials_file", cfg.Bus.PubSub.CredentialsFile, cfg.Bus.Type == "pubsub")
	return files
}

// loadConfig is config.Load on the ConfigMap's file and env; it also
// returns the operations listener's port (ops.listen).
func loadConfig(t *testing.T, raw string, env map[string]string) (config.Config, int) {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(raw), &doc); err != nil {
		t.Fatal(err)
	}
	opsSection, _ := doc["ops"].(map[string]any)
	opsListen, _ := opsSection["listen"].(string)
	if opsListen == "" {
		t.Fatal("the configuration does not set ops.listen: the probes need the operations listener on the pod's address")
	}
	if host, _, _ := net.SplitHostPort(opsListen); host != "" {
		t.Fatalf("ops.listen %q: the kubelet probes the pod's address; listen on all (\":port\")", opsListen)
	}
	cfg := config.Default()
	if err := config.Parse([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.FromEnv(func(k string) string { return env[k] })
	cfg.FillDefaults()
	if err := cfg.Check(); err != nil {
		t.Fatalf("the pod's configuration is refused:\n%v", err)
	}
	return cfg, port(t, opsListen)
}

func port(t *testing.T, listen string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatalf("listen address %q: %v", listen, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n == 0 {
		t.Fatalf("listen address %q: want a fixed port", listen)
	}
	return n
}

// matches reports whether a selector selects labels.
func matches(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}
