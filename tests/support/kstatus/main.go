// Command kstatus prints what kstatus (the status library Flux and kpt read health with) makes of Kubernetes
// objects: it reads one JSON object per line on stdin and writes, per object, one JSON line holding the status
// that status.Compute finds and its message.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run() error {
	lines := bufio.NewScanner(os.Stdin)
	// A ModelDeployment's status holds up to 100 history entries: far more than bufio's 64 KiB default line.
	lines.Buffer(make([]byte, 0, 1<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	for number := 1; lines.Scan(); number++ {
		// Unstructured's own decoder keeps whole numbers int64, as the API machinery (and kstatus) expect them.
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(lines.Bytes()); err != nil {
			return fmt.Errorf("line %d is not a Kubernetes object: %w", number, err)
		}
		result, err := status.Compute(object)
		if err != nil {
			return fmt.Errorf("line %d (%s %s): %w", number, object.GetKind(), object.GetName(), err)
		}
		if err := out.Encode(verdict{Status: result.Status.String(), Message: result.Message}); err != nil {
			return err
		}
	}
	return lines.Err()
}
