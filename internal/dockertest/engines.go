package dockertest

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/talkingdata/ipam/internal/testproc"
)

// Engine is one dockerd build and the CLI that talks to it.
//
// The zero Engine is the system's Debian docker.io (dockerd 20.10, found on PATH as before).
// The others live in private roots that scripts/install-engines.sh (run by `make test-deps`)
// puts in the engine cache, each described by the engine.env it writes there: nothing of them
// is installed system-wide.
type Engine struct {
	Name    string   // one of KnownEngines
	Dockerd string   // path of dockerd; containerd, runc, docker-init… are found in Path first, then beside it, then on PATH
	Docker  string   // the docker CLI for it
	Args    []string // extra dockerd flags
	// Path holds directories put first on dockerd's PATH: the engine root's containerd,
	// containerd-shim-runc-v2, docker-init, docker-proxy and, where the root has one, runc
	// (else bookworm's /usr/sbin/runc is used).
	Path []string
	// Compose is a Docker Compose v2 binary that goes with this engine (run it directly, as
	// `docker-compose`), or "" where there is none: 20.10 has Debian's docker-compose 1.29 on PATH.
	Compose string
	// APIVersion is the highest API version the first release of this engine speaks ("1.41"
	// for 20.10); later patch releases and moby-module builds may speak more. A moby-module
	// build reports no release version ("library-import"), so this is what identifies it.
	APIVersion string
}

// KnownEngines returns the names of the engines of the matrix, oldest first: the system's 20.10
// and the roots of scripts/install-engines.sh (TestKnownEngines checks that they agree).
func KnownEngines() []string { return []string{"20.10", "26.1", "28.5", "29"} }

// DefaultEngines is the matrix `make test` runs when TALKINGDATA_ENGINES is unset.
const DefaultEngines = "20.10,28.5,29"

// SystemEngine is the Debian docker.io installed on the machine (20.10 on bookworm): what the
// zero Engine means. "" paths mean it is not installed.
func SystemEngine() Engine {
	return Engine{Name: "20.10", Dockerd: testproc.LookTool("dockerd"), Docker: testproc.LookTool("docker"), APIVersion: "1.41"}
}

// IsZero reports whether e is the zero Engine (the system's).
func (e Engine) IsZero() bool { return e.Name == "" && e.Dockerd == "" }

// EngineDir is the engine cache: $TALKINGDATA_ENGINE_DIR, else .cache/engines in RepoRoot. ""
// when neither is known.
func EngineDir() string {
	if d := os.Getenv("TALKINGDATA_ENGINE_DIR"); d != "" {
		return d
	}
	root, err := RepoRoot()
	if err != nil {
		return ""
	}
	return filepath.Join(root, ".cache", "engines")
}

// RepoRoot finds this module's root from the working directory upwards (go test runs in the
// package's directory), else from this source file's location (a program run from elsewhere).
func RepoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for d := dir; ; d = filepath.Dir(d) {
			if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
				bytes.HasPrefix(b, []byte("module github.com/talkingdata/ipam\n")) {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", errors.New("dockertest: cannot find the repository (go.mod of github.com/talkingdata/ipam)")
}

// FindEngine returns the named engine and "" if it is installed, or a zero Engine and what is
// missing. For programs that are not tests; tests use LookupEngine.
func FindEngine(name string) (Engine, string) {
	if !slices.Contains(KnownEngines(), name) {
		return Engine{}, "dockertest: unknown engine " + name + " (known: " + strings.Join(KnownEngines(), ", ") + ")"
	}
	if name == "20.10" {
		e := SystemEngine()
		if e.Dockerd == "" || e.Docker == "" {
			return Engine{}, "dockertest: engine 20.10: no dockerd or docker (Debian package docker.io)"
		}
		return e, ""
	}
	dir := EngineDir()
	root := filepath.Join(dir, name)
	// The installer writes engine.env last: a root without it was not installed completely.
	m, err := readManifest(filepath.Join(root, "engine.env"))
	if err != nil {
		return Engine{}, "dockertest: engine " + name + " is not installed in " + dir + " (" + err.Error() +
			"): run `make test-deps` (scripts/install-engines.sh)"
	}
	in := func(key string) string {
		if m[key] == "" {
			return ""
		}
		return filepath.Join(root, m[key])
	}
	e := Engine{
		Name:       name,
		Dockerd:    in("DOCKERD"),
		Docker:     in("DOCKER"),
		Args:       strings.Fields(m["DOCKERD_ARGS"]),
		Compose:    in("COMPOSE"),
		APIVersion: m["API_VERSION"],
	}
	for _, p := range filepath.SplitList(m["PATH"]) {
		e.Path = append(e.Path, filepath.Join(root, p))
	}
	if e.Dockerd == "" || e.Docker == "" {
		return Engine{}, "dockertest: engine " + name + ": " + filepath.Join(root, "engine.env") +
			" names no DOCKERD or DOCKER: run `make test-deps` (scripts/install-engines.sh)"
	}
	return e, ""
}

// readManifest reads an engine.env: KEY=VALUE lines.
func readManifest(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m, nil
}

// LookupEngine returns the named engine ("20.10", "26.1", "28.5", "29"). When it is not
// installed it skips the test, or fails it when CI=true (testproc.Require), naming `make
// test-deps`; an unknown name always fails.
func LookupEngine(t testing.TB, name string) Engine {
	t.Helper()
	e, miss := FindEngine(name)
	if strings.HasPrefix(miss, "dockertest: unknown engine") {
		t.Fatal(miss)
	}
	testproc.Require(t, miss == "", miss)
	return e
}

// MatrixEngines returns the engines named in $TALKINGDATA_ENGINES (comma-separated), default
// DefaultEngines, each looked up with LookupEngine.
func MatrixEngines(t testing.TB) []Engine {
	t.Helper()
	var engines []Engine
	for _, name := range MatrixEngineNames() {
		engines = append(engines, LookupEngine(t, name))
	}
	return engines
}

// MatrixEngineNames are the names in $TALKINGDATA_ENGINES, default DefaultEngines.
func MatrixEngineNames() []string {
	if names := ParseEngineNames(os.Getenv("TALKINGDATA_ENGINES")); len(names) > 0 {
		return names
	}
	return ParseEngineNames(DefaultEngines)
}

// ParseEngineNames splits a comma-separated list of engine names, such as $TALKINGDATA_ENGINES,
// dropping spaces and empty entries. It does not check the names: FindEngine does.
func ParseEngineNames(list string) []string {
	var names []string
	for _, n := range strings.Split(list, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	return names
}

// DockerdPath is dockerd's PATH: the engine's own directories, dockerd's, then the system's.
func (e Engine) DockerdPath() string {
	dirs := append(slices.Clone(e.Path), filepath.Dir(e.Dockerd), "/usr/sbin", "/usr/bin", "/sbin", "/bin")
	if p := os.Getenv("PATH"); p != "" {
		dirs = append(dirs, p)
	}
	return strings.Join(dirs, ":")
}
