// Command ipamctl inspects and manages the talkingdata IPAM pools in etcd.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "ipamctl:", err)
		os.Exit(1)
	}
}
