package dockertest

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/talkingdata/ipam/internal/testproc"
)

// Engine is one dockerd build and the CLI that talks to it.
//
// The zero Engine is the system's Debian docker.io (dockerd 20.10, found on PATH as before).
// The others live in private roots that scripts/install-engines.sh (run by `make test-deps`)
// puts in the engine cache: nothing of them is installed system-wide.
type Engine struct {
	Name    string   // "20.10", "26.1", "28.5", "29"
	Dockerd string   // path of dockerd; containerd, runc, docker-init… are found beside it first, then in Path, then on PATH
	Docker  string   // the docker CLI for it
	Args    []string // extra dockerd flags (29: --seccomp-profile=unconfined)
	// Path holds directories put first on dockerd's PATH: the engine root's containerd,
	// containerd-shim-runc-v2, docker-init, docker-proxy and (29) runc. Where a root has no runc,
	// bookworm's /usr/sbin/runc is used.
	Path []string
	// Compose is a Docker Compose v2 binary that goes with this engine (run it directly, as
	// `docker-compose`), or "" where there is none: 20.10 has Debian's docker-compose 1.29 on PATH.
	Compose string
	// APIVersion is the highest API version the first release of this engine speaks ("1.41" for
	// 20.10, "1.52" for 29.0); later patch releases may speak more (the v2.0.0-beta.18 module
	// build of 29 speaks 1.55). A moby-module build reports no release version
	// ("library-import"), so this is what identifies it.
	APIVersion string
}

// engineSpecs are the engines of the matrix: where each lives and what identifies it.
type engineSpec struct {
	name, api string
	args      []string
}

var engineSpecs = []engineSpec{
	{name: "20.10", api: "1.41"},
	{name: "26.1", api: "1.45"},
	{name: "28.5", api: "1.51"},
	// Bookworm's libseccomp does not know syscalls in Docker 29's default profile.
	{name: "29", api: "1.52", args: []string{"--seccomp-profile=unconfined"}},
}

// DefaultEngines is the matrix `make test` runs when TALKINGDATA_ENGINES is unset.
const DefaultEngines = "20.10,28.5,29"

// SystemEngine is the Debian docker.io installed on the machine (20.10 on bookworm): what the
// zero Engine means. "" paths mean it is not installed.
func SystemEngine() Engine {
	return Engine{Name: "20.10", Dockerd: lookTool("dockerd"), Docker: lookTool("docker"), APIVersion: "1.41"}
}

// IsZero reports whether e is the zero Engine (the system's).
func (e Engine) IsZero() bool { return e.Name == "" && e.Dockerd == "" }

// EngineDir is the engine cache: $TALKINGDATA_ENGINE_DIR, else .cache/engines in the module root
// (found from the working directory upwards; go test runs in the package's directory). "" when
// neither is known.
func EngineDir() string {
	if d := os.Getenv("TALKINGDATA_ENGINE_DIR"); d != "" {
		return d
	}
	wd, err := os.Getwd()
	if err != nil {
		return ""
	}
	for d := wd; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			bytes.HasPrefix(b, []byte("module github.com/talkingdata/ipam\n")) {
			return filepath.Join(d, ".cache", "engines")
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

// FindEngine returns the named engine and "" if it is installed, or a zero Engine and what is
// missing. For programs that are not tests; tests use LookupEngine.
func FindEngine(name string) (Engine, string) {
	i := slices.IndexFunc(engineSpecs, func(s engineSpec) bool { return s.name == name })
	if i < 0 {
		return Engine{}, "dockertest: unknown engine " + strings.TrimSpace(name) + " (known: " + knownEngines() + ")"
	}
	spec := engineSpecs[i]
	if name == "20.10" {
		e := SystemEngine()
		if e.Dockerd == "" || e.Docker == "" {
			return Engine{}, "dockertest: engine 20.10: no dockerd or docker (Debian package docker.io)"
		}
		return e, ""
	}
	dir := EngineDir()
	root := filepath.Join(dir, name)
	e := Engine{
		Name:       name,
		Dockerd:    filepath.Join(root, "usr", "sbin", "dockerd"),
		Docker:     filepath.Join(root, "usr", "bin", "docker"),
		Args:       slices.Clone(spec.args),
		Path:       []string{filepath.Join(root, "usr", "sbin"), filepath.Join(root, "usr", "bin")},
		Compose:    filepath.Join(root, "usr", "libexec", "docker", "cli-plugins", "docker-compose"),
		APIVersion: spec.api,
	}
	// The stamp is written last: a root without it was not installed completely.
	for _, p := range []string{filepath.Join(root, ".installed"), e.Dockerd, e.Docker} {
		if _, err := os.Stat(p); err != nil {
			return Engine{}, "dockertest: engine " + name + " is not installed in " + dir +
				" (no " + p + "): run `make test-deps` (scripts/install-engines.sh)"
		}
	}
	if _, err := os.Stat(e.Compose); err != nil {
		e.Compose = ""
	}
	return e, ""
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
	list := os.Getenv("TALKINGDATA_ENGINES")
	if strings.TrimSpace(list) == "" {
		list = DefaultEngines
	}
	var names []string
	for _, n := range strings.Split(list, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	return names
}

func knownEngines() string {
	var names []string
	for _, s := range engineSpecs {
		names = append(names, s.name)
	}
	return strings.Join(names, ", ")
}

// pathFor is dockerd's PATH: the engine's own directories, dockerd's, then the system's.
func (e Engine) pathFor() string {
	dirs := append(slices.Clone(e.Path), filepath.Dir(e.Dockerd), "/usr/sbin", "/usr/bin", "/sbin", "/bin")
	if p := os.Getenv("PATH"); p != "" {
		dirs = append(dirs, p)
	}
	return strings.Join(dirs, ":")
}
