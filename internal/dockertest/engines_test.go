package dockertest

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Every engine of the matrix ($TALKINGDATA_ENGINES) boots, is the version it claims, and runs a
// container on a bridge network through its own containerd, runc and docker-init.
func TestMatrixEnginesBoot(t *testing.T) {
	for _, e := range MatrixEngines(t) {
		t.Run(e.Name, func(t *testing.T) {
			t.Parallel()
			var d *Daemon
			t.Run("run", func(t *testing.T) {
				d = Start(t, Options{Engine: e})
				if got := d.Engine(); got.Name != e.Name || got.Dockerd != e.Dockerd {
					t.Fatalf("Engine() = %+v, want %+v", got, e)
				}
				// A moby-module build (29) reports no release version ("library-import" or
				// "dev"): its API version tells what it is.
				out := d.MustDocker(t, "version", "--format", "{{.Server.Version}} {{.Server.APIVersion}} {{.Client.Version}}")
				f := strings.Fields(out)
				if len(f) != 3 {
					t.Fatalf("docker version printed %q", out)
				}
				server, api := f[0], f[1]
				if e.Name != "29" && !strings.HasPrefix(server, e.Name+".") {
					t.Errorf("%s: server version %s, want %s.x", e.Dockerd, server, e.Name)
				}
				if !apiAtLeast(api, e.APIVersion) || e.Name != "29" && api != e.APIVersion {
					t.Errorf("%s: API version %s, want %s", e.Dockerd, api, e.APIVersion)
				}
				t.Logf("engine %s: server %s, API %s, client %s (%s)", e.Name, server, api, f[2], e.Docker)

				img := d.ImportBusybox(t)
				d.MustDocker(t, "network", "create", "--subnet", "198.18.7.0/24",
					"-o", "com.docker.network.bridge.name=tdtbr0", "n1")
				if out := d.MustDocker(t, "run", "--rm", "--init", "--network", "n1", img, "echo", "hi"); out != "hi" {
					t.Fatalf("echo hi printed %q", out)
				}
			})
			assertCleanedUp(t, d, true)
		})
	}
}

// apiAtLeast compares API versions "1.N".
func apiAtLeast(v, min string) bool {
	n, err1 := strconv.Atoi(strings.TrimPrefix(v, "1."))
	m, err2 := strconv.Atoi(strings.TrimPrefix(min, "1."))
	return err1 == nil && err2 == nil && strings.HasPrefix(v, "1.") && n >= m
}

func TestEngineLookup(t *testing.T) {
	if got := strings.Join(ParseEngineNames(" 28.5 ,29,,"), "|"); got != "28.5|29" {
		t.Errorf("ParseEngineNames = %q", got)
	}
	t.Setenv("TALKINGDATA_ENGINES", " 28.5 ,29,")
	if got := strings.Join(MatrixEngineNames(), "|"); got != "28.5|29" {
		t.Errorf("MatrixEngineNames = %q", got)
	}
	for _, env := range []string{"", " , "} {
		t.Setenv("TALKINGDATA_ENGINES", env)
		if got := strings.Join(MatrixEngineNames(), ","); got != DefaultEngines {
			t.Errorf("MatrixEngineNames with TALKINGDATA_ENGINES=%q: %q, want %q", env, got, DefaultEngines)
		}
	}

	if _, miss := FindEngine("27.0"); !strings.Contains(miss, "unknown engine 27.0") {
		t.Errorf("FindEngine(27.0): %q", miss)
	}
	empty := t.TempDir()
	t.Setenv("TALKINGDATA_ENGINE_DIR", empty)
	if _, miss := FindEngine("28.5"); !strings.Contains(miss, "make test-deps") || !strings.Contains(miss, empty) {
		t.Errorf("FindEngine(28.5) in an empty cache: %q", miss)
	}
	// A root with binaries but no engine.env was not installed completely.
	root := filepath.Join(empty, "29")
	for _, p := range []string{"usr/sbin/dockerd", "usr/bin/docker"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, miss := FindEngine("29"); !strings.Contains(miss, "engine.env") {
		t.Errorf("FindEngine(29) without engine.env: %q", miss)
	}
	manifest := "DOCKERD=usr/sbin/dockerd\nDOCKER=usr/bin/docker\nDOCKERD_ARGS=--a --b\nPATH=usr/sbin:usr/bin\nAPI_VERSION=1.52\n"
	if err := os.WriteFile(filepath.Join(root, "engine.env"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	e, miss := FindEngine("29")
	if miss != "" || e.Dockerd != filepath.Join(root, "usr/sbin/dockerd") || e.Docker != filepath.Join(root, "usr/bin/docker") ||
		strings.Join(e.Args, "|") != "--a|--b" || e.Compose != "" || e.APIVersion != "1.52" {
		t.Errorf("FindEngine(29) = %+v, %q", e, miss)
	}
	if p := e.DockerdPath(); !strings.HasPrefix(p, filepath.Join(root, "usr/sbin")+":"+filepath.Join(root, "usr/bin")+":") {
		t.Errorf("PATH for 29 = %q", p)
	}

	t.Setenv("TALKINGDATA_ENGINE_DIR", "")
	wd, _ := os.Getwd()
	if got, want := EngineDir(), filepath.Join(filepath.Dir(filepath.Dir(wd)), ".cache", "engines"); got != want {
		t.Errorf("EngineDir() = %q, want %q", got, want)
	}
}

// KnownEngines are the system's 20.10 and the engine roots scripts/install-engines.sh installs.
func TestKnownEngines(t *testing.T) {
	out, err := exec.Command("bash", "../../scripts/install-engines.sh", "--list").Output()
	if err != nil {
		t.Fatalf("install-engines.sh --list: %v", err)
	}
	roots := slices.DeleteFunc(strings.Fields(string(out)), func(r string) bool { return strings.HasPrefix(r, "etcd-") })
	slices.Sort(roots)
	if got, want := strings.Join(roots, ","), strings.Join(KnownEngines()[1:], ","); got != want || KnownEngines()[0] != SystemEngine().Name {
		t.Errorf("install-engines.sh installs engines %s, KnownEngines are %v (want %s, then those)", got, KnownEngines(), SystemEngine().Name)
	}
}
