package redistest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// sysProcAttr makes the kernel SIGKILL redis-server when the test binary
// dies, so a crashed or killed `go test` does not leak servers. (Pdeathsig
// is tied to the OS thread that forked the child; Go only retires threads
// of goroutines that exit while locked with runtime.LockOSThread, which the
// harness never does.)
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// waitStopped polls /proc until the process is (stopped=true) or is no
// longer (stopped=false) in the stopped state 'T', so Pause and Resume
// return only once the signal has taken effect.
func waitStopped(pid int, stopped bool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		state, err := procState(pid)
		if err != nil {
			return err
		}
		if (state == 'T') == stopped {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redistest: pid %d still in state %q after %v", pid, state, timeout)
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}

// procState returns the state letter of /proc/<pid>/stat ("R", "S", "T", ...).
func procState(pid int) (byte, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// Format: "pid (comm) S ..."; comm may contain spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return 0, fmt.Errorf("redistest: cannot parse /proc/%d/stat", pid)
	}
	return s[i+2], nil
}

// listening reports whether process pid has a TCP socket in LISTEN state
// on port: a listening entry of /proc/net/tcp{,6} (the child shares our
// network namespace) whose socket inode is one of the process's open file
// descriptors. An error means /proc cannot tell; a process that has exited
// is simply not listening.
func listening(pid, port int) (bool, error) {
	suffix := fmt.Sprintf(":%04X", port)
	inodes := map[string]bool{}
	read := 0
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		read++
		for _, line := range strings.Split(string(b), "\n") {
			// sl local_address rem_address st ... uid timeout inode
			f := strings.Fields(line)
			if len(f) > 9 && f[3] == "0A" && strings.HasSuffix(f[1], suffix) {
				inodes["socket:["+f[9]+"]"] = true
			}
		}
	}
	if read == 0 {
		return false, errors.New("redistest: cannot read /proc/net/tcp")
	}
	if len(inodes) == 0 {
		return false, nil
	}
	fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return false, nil // exited (or exiting)
	}
	for _, fd := range fds {
		if link, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && inodes[link] {
			return true, nil
		}
	}
	return false, nil
}
