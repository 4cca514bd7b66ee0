// Command ticketi-edge is Caddy with the standard modules and the Ticketi
// edge modules: the same binary xcaddy.sh builds, buildable with plain
// `go build` so tests can run real Caddy instances as subprocesses.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// Caddy's standard modules, as in the official distribution.
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// The Ticketi edge modules.
	_ "github.com/ticketi/edge/caddymodule"
)

func main() {
	caddycmd.Main()
}
