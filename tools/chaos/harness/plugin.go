package harness

import (
	"fmt"
	"time"

	"github.com/talkingdata/ipam/internal/pluginclient"
)

// plugin is one host's plugin socket, spoken to as dockerd does (internal/pluginclient).
type plugin struct {
	host int
	name string // "h1"
	*pluginclient.Client
}

func newPlugin(host int, socket string, timeout time.Duration) *plugin {
	return &plugin{host: host, name: fmt.Sprintf("h%d", host), Client: pluginclient.New(socket, timeout)}
}
