package deploy_test

import (
	"bufio"
	"context"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

// loadCompose writes .env with nkeys.sh (and a real nk) and loads
// compose.yaml with compose-go, the loader of docker compose itself:
// schema validation, interpolation, and its consistency checks (depends_on,
// configs, secrets and volumes that exist).
func loadCompose(t *testing.T) (*types.Project, map[string]string) {
	t.Helper()
	out := run(t, "", []string{"PATH=" + bins(t, "nk") + string(os.PathListSeparator) + os.Getenv("PATH")}, "sh", "compose/nkeys.sh")
	env, err := dotenv.UnmarshalBytesWithLookup([]byte(out), nil)
	if err != nil {
		t.Fatalf("nkeys.sh output is no .env: %v\n%s", err, out)
	}
	for _, k := range []string{"NATTER_EDGE_SEED", "NATTER_EDGE_NKEY", "NATTER_WORKER_SEED", "NATTER_WORKER_NKEY", "NATTER_AUTH_NKEY", "NATTER_SERVICE_NKEY", "NATTER_JWT_SECRET"} {
		if env[k] == "" {
			t.Fatalf("nkeys.sh sets no %s:\n%s", k, out)
		}
	}
	dir, _ := filepath.Abs("compose")
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(dir, "compose.yaml")}},
		Environment: env,
	}, func(o *loader.Options) { o.SetProjectName("natter", true) })
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return p, env
}

func TestCompose(t *testing.T) {
	p, dotEnv := loadCompose(t)
	natsNodes := []string{"n1", "n2", "n3"}
	for _, want := range append(natsNodes, "edge", "worker", "lb") {
		if _, ok := p.Services[want]; !ok {
			t.Fatalf("no service %q", want)
		}
	}
	for name, s := range p.Services {
		if s.Image == "" && s.Build == nil {
			t.Errorf("%s: neither image nor build", name)
		}
		if s.HealthCheck == nil || len(s.HealthCheck.Test) == 0 {
			t.Errorf("%s: no healthcheck", name)
		}
		for dep := range s.DependsOn {
			if _, ok := p.Services[dep]; !ok {
				t.Errorf("%s depends on %q, which is no service", name, dep)
			}
		}
		for _, c := range s.Configs {
			f := p.Configs[c.Source].File
			if _, err := os.Stat(f); err != nil {
				t.Errorf("%s: config %s: %v", name, c.Source, err)
			}
		}
	}

	// NATS: an explicit, recent enough image; the nodes' config loads with
	// natter.conf's accounts and routes to the three services.
	var routes []string
	for _, n := range natsNodes {
		routes = append(routes, "nats://"+n+":6222")
	}
	for _, n := range natsNodes {
		s := p.Services[n]
		checkNATSImage(t, n, s.Image)
		dir := t.TempDir()
		for _, c := range s.Configs {
			body, err := os.ReadFile(p.Configs[c.Source].File)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(c.Target)), body, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if !slices.Equal(s.Command, []string{"nats-server", "--config", "/etc/nats/nats.conf"}) {
			t.Errorf("%s: command %q", n, s.Command)
		}
		env := map[string]string{}
		for k, v := range s.Environment {
			if v == nil {
				t.Fatalf("%s: %s unset", n, k)
			}
			env[k] = *v
		}
		opts := loadNATS(t, filepath.Join(dir, "nats.conf"), env)
		checkNATSNode(t, n+" nats.conf", opts, env, "/data/jetstream", routes)
		if opts.ServerName != n {
			t.Errorf("%s: server_name %q", n, opts.ServerName)
		}
		if !slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool { return v.Target == "/data" && v.Type == types.VolumeTypeVolume }) {
			t.Errorf("%s: JetStream's /data is not a named volume", n)
		}
	}
	if chartImage := chartNATSImage(t); chartImage != p.Services["n1"].Image {
		t.Errorf("compose runs %s, the chart %s", p.Services["n1"].Image, chartImage)
	}

	// Edges and workers: built from deploy/Dockerfile's targets, 2 of each,
	// every NATTER_* a flag, R3 presence, the nkey seed a mounted secret.
	targets := dockerfileTargets(t)
	for _, command := range []string{"edge", "worker"} {
		s := p.Services[command]
		if s.Build == nil || s.Build.Target != command || !slices.Contains(targets, command) {
			t.Errorf("%s: build %+v: want deploy/Dockerfile target %q", command, s.Build, command)
		} else if df := filepath.Join(s.Build.Context, s.Build.Dockerfile); !strings.HasSuffix(df, "deploy/Dockerfile") {
			t.Errorf("%s: Dockerfile %s", command, df)
		} else if _, err := os.Stat(filepath.Join(s.Build.Context, "go.mod")); err != nil {
			t.Errorf("%s: build context %s holds no go.mod", command, s.Build.Context)
		}
		if s.GetScale() != 2 {
			t.Errorf("%s: %d replicas, want 2", command, s.GetScale())
		}
		var names []string
		env := map[string]string{}
		for k, v := range s.Environment {
			names = append(names, k)
			if v != nil {
				env[k] = *v
			}
		}
		checkEnvNames(t, "compose "+command, command, names)
		urls := strings.Split(env["NATTER_NATS"], ",")
		var hosts []string
		for _, u := range urls {
			h, ok := strings.CutPrefix(u, "nats://")
			h, port, _ := strings.Cut(h, ":")
			if !ok || port != "4222" || !slices.Contains(natsNodes, h) {
				t.Errorf("%s: NATS URL %q is no NATS service", command, u)
			}
			hosts = append(hosts, h)
		}
		if !slices.Equal(hosts, natsNodes) {
			t.Errorf("%s: NATTER_NATS %q, want all three nodes", command, env["NATTER_NATS"])
		}
		if env["NATTER_ADMIN_LISTEN"] != ":9090" {
			t.Errorf("%s: NATTER_ADMIN_LISTEN %q", command, env["NATTER_ADMIN_LISTEN"])
		}
		checkSecretFile(t, p, s, env["NATTER_NATS_NKEY"], "NATTER_"+strings.ToUpper(command)+"_SEED", dotEnv)
		for _, dep := range natsNodes {
			if s.DependsOn[dep].Condition != types.ServiceConditionHealthy {
				t.Errorf("%s: starts before %s is healthy", command, dep)
			}
		}
		if !slices.Equal(s.HealthCheck.Test, []string{"CMD", "/usr/local/bin/healthcheck", "http://127.0.0.1:9090/readyz"}) {
			t.Errorf("%s: healthcheck %q", command, s.HealthCheck.Test)
		}
		if s.StopGracePeriod == nil {
			t.Errorf("%s: no stop_grace_period", command)
		}
		if command == "edge" {
			for _, k := range []string{"NATTER_PRESENCE_REPLICAS", "NATTER_DURABLE_REPLICAS"} {
				if env[k] != "3" {
					t.Errorf("edge: %s %q, want 3", k, env[k])
				}
			}
			checkSecretFile(t, p, s, env["NATTER_JWT_SECRET_FILE"], "NATTER_JWT_SECRET", dotEnv)
		}
	}

	// The load balancer publishes 8080 and its config routes to the edges.
	lb := p.Services["lb"]
	if !slices.ContainsFunc(lb.Ports, func(pc types.ServicePortConfig) bool { return pc.Published == "8080" && pc.Target == 8080 }) {
		t.Errorf("lb: ports %+v: want 8080:8080", lb.Ports)
	}
	if len(lb.Configs) != 1 {
		t.Fatalf("lb: configs %+v", lb.Configs)
	}
	checkHAProxy(t, p.Configs[lb.Configs[0].Source].File)
}

// checkSecretFile checks that path is a compose secret of s filled from the
// .env variable envVar.
func checkSecretFile(t *testing.T, p *types.Project, s types.ServiceConfig, path, envVar string, dotEnv map[string]string) {
	t.Helper()
	name, ok := strings.CutPrefix(path, "/run/secrets/")
	if !ok {
		t.Errorf("%s: secret file %q is not under /run/secrets", s.Name, path)
		return
	}
	for _, sec := range s.Secrets {
		if sec.Target == name {
			if def := p.Secrets[sec.Source]; def.Environment != envVar || dotEnv[envVar] == "" {
				t.Errorf("%s: secret %s comes from %q, want $%s", s.Name, sec.Source, def.Environment, envVar)
			}
			if sec.UID != "65532" || sec.Mode == nil || *sec.Mode&0o077 != 0 {
				t.Errorf("%s: secret %s: uid %q mode %v: want the image's user, private", s.Name, name, sec.UID, sec.Mode)
			}
			return
		}
	}
	t.Errorf("%s: %s is no secret of the service", s.Name, path)
}

// chartNATSImage is the NATS image of the chart's defaults.
func chartNATSImage(t *testing.T) string {
	t.Helper()
	for _, s := range render(t).statefulSets {
		return s.Spec.Template.Spec.Containers[0].Image
	}
	t.Fatal("the chart has no StatefulSet")
	return ""
}

var fromLine = regexp.MustCompile(`(?im)^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$`)

// dockerfileTargets checks deploy/Dockerfile's shape and returns its stages.
func dockerfileTargets(t *testing.T) []string {
	t.Helper()
	body, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(body)
	var stages, bases []string
	for _, m := range fromLine.FindAllStringSubmatch(df, -1) {
		bases = append(bases, m[1])
		stages = append(stages, m[2])
	}
	if len(stages) < 3 || stages[len(stages)-1] != "edge" || !slices.Contains(stages, "worker") || !slices.Contains(stages, "build") {
		t.Fatalf("Dockerfile stages %q: want build, ..., worker, edge (the default)", stages)
	}
	if !strings.HasPrefix(bases[0], "golang:") {
		t.Errorf("Dockerfile build stage on %s", bases[0])
	}
	for _, want := range []string{
		"GOWORK=off CGO_ENABLED=0", "-trimpath", `-ldflags="-s -w"`, "./cmd/edge ./cmd/worker ./deploy/healthcheck",
		"--mount=type=cache,target=/go/pkg/mod", "--mount=type=cache,target=/root/.cache/go-build",
		"FROM gcr.io/distroless/static-debian12:nonroot", "USER 65532:65532", "EXPOSE 8080 9090",
		`ENTRYPOINT ["/usr/local/bin/edge"]`, `ENTRYPOINT ["/usr/local/bin/worker"]`,
		"COPY --from=build /out/edge /out/worker /out/healthcheck /usr/local/bin/",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	for _, dir := range []string{"../cmd/edge", "../cmd/worker", "healthcheck"} {
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("Dockerfile builds %s: %v", dir, err)
		}
	}
	// The build context keeps what go build needs.
	ignore, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(ignore))
	for _, needed := range []string{"go.mod", "go.sum", "cmd", "internal", "pkg", "schemas"} {
		if slices.Contains(lines, needed) || slices.Contains(lines, "/"+needed) {
			t.Errorf(".dockerignore drops %s, which the build needs", needed)
		}
	}
	if !slices.Contains(lines, "!deploy/healthcheck") {
		t.Error(".dockerignore drops deploy/healthcheck")
	}
	// In the image deploy/healthcheck is a package of the root module
	// (.dockerignore leaves deploy/go.mod out), here one of deploy's: it
	// builds in both only while it needs nothing but the standard library.
	if !slices.Contains(lines, "deploy") || slices.Contains(lines, "!deploy/go.mod") {
		t.Error(".dockerignore keeps deploy/go.mod, which makes deploy/healthcheck part of another module than the build's")
	}
	checkStdlibOnly(t, "healthcheck")
	return stages
}

// checkStdlibOnly fails for every import of the Go files in dir that is
// not of the standard library.
func checkStdlibOnly(t *testing.T, dir string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("%s: no Go files (%v)", dir, err)
	}
	for _, file := range files {
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); strings.Contains(strings.Split(p, "/")[0], ".") {
				t.Errorf("%s imports %s: the image builds it as part of the root module, whose go.mod may not have it", file, p)
			}
		}
	}
}

// checkHAProxy reads the HAProxy config as far as possible without
// haproxy: sections and keywords, the WebSocket frontend on 8080, /readyz
// checks on the edges' admin port, the edges' service and port.
func checkHAProxy(t *testing.T, file string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sections := map[string][]string{} // "backend edges" -> its lines
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.Index(line, "#"); i >= 0 {
			line = line[:i]
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			kind := strings.Fields(line)[0]
			if !slices.Contains([]string{"global", "defaults", "frontend", "backend", "listen", "resolvers"}, kind) {
				t.Errorf("%s:%d: unknown section %q", file, n, kind)
			}
			section = strings.Join(strings.Fields(line), " ")
			if _, dup := sections[section]; dup {
				t.Errorf("%s:%d: section %q twice", file, n, section)
			}
			sections[section] = nil
			continue
		}
		if section == "" {
			t.Errorf("%s:%d: a keyword outside a section", file, n)
		}
		sections[section] = append(sections[section], strings.Join(strings.Fields(line), " "))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"defaults":           {"mode http", "timeout tunnel 1h", "option forwardfor"},
		"frontend websocket": {"bind :8080", "default_backend edges"},
		"backend edges": {
			"option httpchk", "http-check send meth GET uri /readyz", "http-check expect status 200",
			"default-server check port 9090 inter 1s fall 2 rise 2 init-addr none resolvers docker",
			"server-template edge 10 edge:8080",
		},
		"resolvers docker": {"nameserver dns 127.0.0.11:53"},
	}
	for sec, lines := range want {
		got, ok := sections[sec]
		if !ok {
			t.Errorf("haproxy.cfg: no section %q", sec)
			continue
		}
		for _, l := range lines {
			if !slices.Contains(got, l) {
				t.Errorf("haproxy.cfg %s: no line %q", sec, l)
			}
		}
	}
}
