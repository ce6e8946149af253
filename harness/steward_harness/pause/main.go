// Command pause holds a pod's namespaces open until the kubelet stops the pod: the sandbox image a node needs
// when registry.k8s.io cannot be reached.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	// SIGCHLD too: in a pod that shares its process namespace this is PID 1, which must reap orphans.
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for received := range signals {
		if received != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
