// Command lab is the lab's command line; scripts/lab.sh runs it (lab.Main documents it).
package main

import (
	"os"

	"github.com/talkingdata/ipam/internal/lab"
)

func main() { os.Exit(lab.Main(os.Args[1:])) }
