package deploy_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/natter/natter/internal/testenv/bincache"
)

// natterConf is the example server configuration that the chart and the
// compose cluster include.
const natterConf = "nats/natter.conf"

// helmVersion is the helm that .ci/run installs.
const helmVersion = "v3.22.0"

// minNATS is the oldest nats-server with per-message TTLs in KV.
var minNATS = [3]int{2, 11, 0}

// helm returns the path of the helm binary, failing (never skipping) when
// there is none.
func helm(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, "go", "bin", "helm")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("helm not found on PATH or in $HOME/go/bin; install it with\n\tgo install helm.sh/helm/v3/cmd/helm@%s\n(.ci/run does)", helmVersion)
	return ""
}

// run runs a command and returns its standard output, failing with its
// standard error.
func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

var (
	binsMu sync.Mutex
	binsAt = map[string]string{}
)

// bins returns the directory holding edge and worker (what == "commands":
// bincache.Commands, the same build as the root module's tests) or nk (from
// the nkeys module the root module requires), built once per test process
// and source state.
func bins(t *testing.T, what string) string {
	t.Helper()
	binsMu.Lock()
	defer binsMu.Unlock()
	if dir, ok := binsAt[what]; ok {
		return dir
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	var dir string
	if what == "nk" {
		dir, err = bincache.Build(root, nil, "github.com/nats-io/nkeys/nk")
	} else {
		dir, err = bincache.Commands(root)
	}
	if err != nil {
		t.Fatalf("build %s: %v", what, err)
	}
	binsAt[what] = dir
	return dir
}

var flagLine = regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`)

// flags lists the flag names of a command ("edge" or "worker") from its
// -help output.
func flags(t *testing.T, command string) map[string]bool {
	t.Helper()
	cmd := exec.Command(filepath.Join(bins(t, "commands"), command), "-help")
	// The binaries have the race detector, which sleeps a second at exit
	// to let other threads report; -help starts none.
	cmd.Env = append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	out, _ := cmd.CombinedOutput() // -help exits 0 or 2 depending on the flag package's mood
	names := map[string]bool{}
	for _, m := range flagLine.FindAllStringSubmatch(string(out), -1) {
		names[m[1]] = true
	}
	if !names["nats"] || !names["admin-listen"] {
		t.Fatalf("%s -help lists no --nats or --admin-listen:\n%s", command, out)
	}
	return names
}

// readEnv are the variables the edge reads itself, besides NATTER_<FLAG>.
var readEnv = map[string]bool{
	"NATTER_JWT_SECRET": true, // the HS256 secret, when --jwt-secret-file is empty
}

// checkEnvNames fails for every NATTER_* variable that names no flag of
// the command. NATTER_CONFIG is --config.
func checkEnvNames(t *testing.T, where, command string, env []string) {
	t.Helper()
	known := flags(t, command)
	for _, name := range env {
		f, ok := strings.CutPrefix(name, "NATTER_")
		if !ok || (command == "edge" && readEnv[name]) {
			continue
		}
		flag := strings.ToLower(strings.ReplaceAll(f, "_", "-"))
		if !known[flag] {
			t.Errorf("%s: %s names no flag of %s (--%s)", where, name, command, flag)
		}
	}
}

// roleKeys makes one nkey per role of natter.conf and returns the
// environment the configuration reads (NATTER_<ROLE>_NKEY=public key) and
// the seeds by role.
func roleKeys(t *testing.T) (env map[string]string, seeds map[string]string) {
	t.Helper()
	env, seeds = map[string]string{}, map[string]string{}
	for _, role := range []string{"edge", "worker", "auth", "service"} {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		seed, _ := kp.Seed()
		env["NATTER_"+strings.ToUpper(role)+"_NKEY"] = pub
		seeds[role] = string(seed)
	}
	return env, seeds
}

// loadNATS loads a nats-server configuration with the given environment.
func loadNATS(t *testing.T, file string, env map[string]string) *server.Options {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatalf("nats-server config %s: %v", file, err)
	}
	return opts
}

// checkNATSNode checks what a cluster node's configuration must give: the
// accounts, users and permissions of natter.conf, JetStream in storeDir,
// and a cluster with the routes wanted.
func checkNATSNode(t *testing.T, where string, got *server.Options, env map[string]string, storeDir string, routes []string) {
	t.Helper()
	want := loadNATS(t, natterConf, env)
	if !got.JetStream || got.StoreDir != storeDir {
		t.Errorf("%s: JetStream %v in %q, want on in %q", where, got.JetStream, got.StoreDir, storeDir)
	}
	if len(got.Nkeys) != len(want.Nkeys) {
		t.Fatalf("%s: %d nkey users, natter.conf has %d", where, len(got.Nkeys), len(want.Nkeys))
	}
	for i, u := range got.Nkeys {
		w := want.Nkeys[i]
		if u.Nkey != w.Nkey || u.Account.Name != w.Account.Name || !reflect.DeepEqual(u.Permissions, w.Permissions) {
			t.Errorf("%s: user %d (%s in %s) differs from natter.conf's", where, i, u.Nkey, u.Account.Name)
		}
	}
	if got.Cluster.Name == "" || got.Cluster.Port == 0 {
		t.Errorf("%s: no cluster name or port: %+v", where, got.Cluster)
	}
	var gotRoutes []string
	for _, r := range got.Routes {
		gotRoutes = append(gotRoutes, r.String())
	}
	if !reflect.DeepEqual(gotRoutes, routes) {
		t.Errorf("%s: routes %q, want %q", where, gotRoutes, routes)
	}
	if got.ServerName == "" || got.HTTPPort == 0 {
		t.Errorf("%s: server name %q, monitoring port %d", where, got.ServerName, got.HTTPPort)
	}
}

var imageVersion = regexp.MustCompile(`^nats:(\d+)\.(\d+)\.(\d+)(-[a-z0-9]+)?$`)

// checkNATSImage fails unless image is nats:X.Y.Z[-variant] with a version
// that has per-message TTLs.
func checkNATSImage(t *testing.T, where, image string) {
	t.Helper()
	m := imageVersion.FindStringSubmatch(image)
	if m == nil {
		t.Errorf("%s: NATS image %q: want an explicit nats:X.Y.Z tag", where, image)
		return
	}
	var v [3]int
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	for i := range v {
		if v[i] != minNATS[i] {
			if v[i] < minNATS[i] {
				t.Errorf("%s: NATS image %q: KV per-message TTLs need nats-server >= %d.%d", where, image, minNATS[0], minNATS[1])
			}
			return
		}
	}
}

// TestChartCopiesNatterConf checks that the chart's copy of natter.conf
// (Helm reads no file outside the chart) is the real one.
func TestChartCopiesNatterConf(t *testing.T) {
	want, err := os.ReadFile(natterConf)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("helm/natter/files/natter.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("deploy/helm/natter/files/natter.conf differs from deploy/nats/natter.conf; copy it: cp deploy/nats/natter.conf deploy/helm/natter/files/")
	}
}

// helmCmd is a helm command in the deploy directory.
func helmCmd(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	return exec.Command(helm(t), args...)
}
