// The etcd server that the registry tests start (tests/etcd_server.py), built by `make etcd` into
// .tools/. etcd's own main package (go.etcd.io/etcd/server/v3) cannot be `go install`ed at a
// version because its go.mod replaces its sibling modules with local paths; this module requires
// the released modules instead and calls the same entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
