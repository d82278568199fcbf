package nettest

import (
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// Veth joins two test namespaces with a veth pair, n's end named nName
// at nAddr, peer's at peerAddr (prefixes like "10.251.0.1/30"): traffic
// between namespaces the test made, never anywhere else. The pair goes
// with the namespaces.
func (n *NS) Veth(t testing.TB, peer *NS, nName, nAddr, peerName, peerAddr string) {
	t.Helper()
	for _, a := range []string{nAddr, peerAddr} {
		if _, err := netip.ParsePrefix(a); err != nil {
			t.Fatalf("veth address %q: %v", a, err)
		}
	}
	// ip names a namespace by a pid: a process born in peer's.
	sleeper := exec.Command("sleep", "60")
	if err := peer.Do(sleeper.Start); err != nil {
		t.Fatalf("veth: %v", err)
	}
	defer func() {
		// Only its namespace was wanted: killed, its exit is the kill's.
		_ = sleeper.Process.Kill()
		_ = sleeper.Wait()
	}()
	run := func(ns *NS, args ...string) []byte {
		t.Helper()
		var out []byte
		err := ns.Do(func() error {
			var err error
			out, err = exec.Command("ip", args...).CombinedOutput()
			return err
		})
		if err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
		return out
	}
	// Busybox's ip (the kernel VM's) takes no "peer name ... netns": make
	// the pair, find the peer the kernel named, then rename and move it.
	run(n, "link", "add", nName, "type", "veth")
	var auto string
	for _, f := range strings.Fields(string(run(n, "-o", "link", "show"))) {
		if name, ok := strings.CutSuffix(f, "@"+nName+":"); ok {
			auto = name
		}
	}
	if auto == "" {
		t.Fatalf("veth: no peer of %s in ip -o link", nName)
	}
	run(n, "link", "set", auto, "name", peerName)
	run(n, "link", "set", peerName, "netns", strconv.Itoa(sleeper.Process.Pid))
	run(n, "addr", "add", nAddr, "dev", nName)
	run(n, "link", "set", nName, "up")
	run(peer, "addr", "add", peerAddr, "dev", peerName)
	run(peer, "link", "set", peerName, "up")
}
