package e2e

import (
	"testing"

	"github.com/talkingdata/ipam/internal/dockertest"
)

// conformanceEngine is one engine of the matrix TestConformance runs on
// (TALKINGDATA_ENGINES, default dockertest.DefaultEngines).
type conformanceEngine struct {
	name   string
	engine dockertest.Engine
}

func conformanceEngines(t *testing.T) []conformanceEngine {
	var out []conformanceEngine
	for _, e := range dockertest.MatrixEngines(t) {
		out = append(out, conformanceEngine{name: e.Name, engine: e})
	}
	return out
}

func (e conformanceEngine) start(t *testing.T, pluginDir string) *dockertest.Daemon {
	return dockertest.Start(t, dockertest.Options{PluginDir: pluginDir, Engine: e.engine})
}

// label is the engine's name in docs/COMPATIBILITY.md.
func (e conformanceEngine) label(api float64) string {
	if e.name != "" {
		return e.name
	}
	return apiEngine(api)
}

// composeBinary is the engine's own compose, if it has one.
func (e conformanceEngine) composeBinary() string { return e.engine.Compose }
