package image

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// TestLayoutMatchesDockerfile checks that the Dockerfile's last stage (the
// image `docker build .` makes) and the Containerfile `make image` builds
// say the same thing: the same base, the same files at the same paths, the
// same labels, user, ports, entrypoint and command. Only where the files
// come from may differ (another stage, or the build context).
func TestLayoutMatchesDockerfile(t *testing.T) {
	t.Parallel()
	docker := readInstructions(t, "../Dockerfile")
	// The last stage only.
	for i := len(docker) - 1; i >= 0; i-- {
		if strings.HasPrefix(docker[i], "FROM ") {
			docker = docker[i:]
			break
		}
	}
	podman := readInstructions(t, "Containerfile")
	if !slices.Equal(docker, podman) {
		t.Errorf("the Dockerfile's last stage and image/Containerfile differ:\nDockerfile:\n  %s\nContainerfile:\n  %s",
			strings.Join(docker, "\n  "), strings.Join(podman, "\n  "))
	}
	if len(podman) == 0 || podman[0] != "FROM scratch" {
		t.Errorf("Containerfile starts %q, want FROM scratch", podman)
	}
	for _, want := range []string{"USER 1337:1337", `ENTRYPOINT ["/meshd"]`, "COPY /meshd"} {
		if !slices.Contains(podman, want) {
			t.Errorf("Containerfile has no %q", want)
		}
	}
}

// readInstructions returns file's instructions one per line, continuation
// lines joined and whitespace collapsed, with what may differ between a
// multi-stage build and a local one normalized away: a stage name (FROM x
// AS y is FROM x) and a COPY's source (COPY --from=build a /b is COPY /b).
func readInstructions(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var cur strings.Builder
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		more := strings.HasSuffix(line, `\`)
		cur.WriteString(strings.TrimSuffix(line, `\`) + " ")
		if more {
			continue
		}
		f := strings.Fields(cur.String())
		cur.Reset()
		switch strings.ToUpper(f[0]) {
		case "FROM":
			f = f[:2]
		case "COPY":
			f = []string{"COPY", f[len(f)-1]}
		}
		out = append(out, strings.Join(f, " "))
	}
	return out
}
