package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// Every recording, replayed through every view, prints what it printed
// when these golden files were captured: the output a user sees is held
// byte for byte across changes to the code behind it (codec, builder,
// renderers). testdata/golden/<recording>.<view> came from `tcpfsm replay`
// itself; -update rewrites them, to be reviewed as a diff. k8s-mix.rec is
// a live session's recording with a fixed metadata source
// (tracer/session's TestK8sMixRecording): its views hold the container
// column and the k8s fields.
func TestReplayEveryRecordingGolden(t *testing.T) {
	t.Setenv("TZ", "UTC")
	recs, err := filepath.Glob("../../tracer/testdata/scenarios/*.rec")
	if err != nil || len(recs) == 0 {
		t.Fatalf("no scenario recordings: %v", err)
	}
	recs = append(recs, mixRecording, k8sRecording)
	views := []struct {
		suffix string
		args   []string
	}{
		{"trace.txt", []string{"replay"}},
		{"life.txt", []string{"replay", "--view", "life"}},
		{"trace.jsonl", []string{"replay", "-o", "json"}},
		{"life.jsonl", []string{"replay", "--view", "life", "-o", "json"}},
		{"life-all.jsonl", []string{"replay", "--view", "life", "--all", "-o", "json"}},
		{"ladder.txt", []string{"replay", "--view", "ladder"}},
	}
	for _, path := range recs {
		name := strings.TrimSuffix(filepath.Base(path), ".rec")
		t.Run(name, func(t *testing.T) {
			for _, v := range views {
				code, stdout, stderr := runCLI(append(v.args, path)...)
				if code != exitOK {
					t.Fatalf("%v: exit %d: %s", v.args, code, stderr)
				}
				golden(t, filepath.Join("golden", name+"."+v.suffix), stdout)
			}
		})
	}
}
