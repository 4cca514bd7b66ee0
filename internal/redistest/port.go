package redistest

import (
	"fmt"
	"net"
	"strconv"
)

// clusterBusOffset is the fixed distance between a Redis Cluster node's
// client port and its cluster bus port.
const clusterBusOffset = 10000

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago. It
// listens on port 0, notes the port the kernel picked and closes the
// listener, so the port can be taken by someone else before redis-server
// binds it: callers retry with a new port on "Address already in use".
//
// When bus is true the port must also leave room for, and find free, the
// cluster bus port (port+10000).
func freePort(bus bool) (int, error) {
	var lastErr error
	for range 20 {
		port, err := pickPort()
		if err != nil {
			lastErr = err
			continue
		}
		if !bus {
			return port, nil
		}
		if port+clusterBusOffset > 65535 {
			lastErr = fmt.Errorf("port %d leaves no room for a cluster bus port", port)
			continue
		}
		if err := probePort(port + clusterBusOffset); err != nil {
			lastErr = err
			continue
		}
		return port, nil
	}
	return 0, fmt.Errorf("redistest: no free port on 127.0.0.1: %w", lastErr)
}

// pickPort lets the kernel choose a free port on 127.0.0.1.
func pickPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// probePort reports whether port can be bound on 127.0.0.1 right now.
func probePort(port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return l.Close()
}
