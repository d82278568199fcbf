package nettest

import (
	"net/netip"
	"os/exec"
	"strconv"
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
		sleeper.Process.Kill()
		sleeper.Wait()
	}()
	run := func(ns *NS, args ...string) {
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
	}
	run(n, "link", "add", nName, "type", "veth", "peer", "name", peerName, "netns", strconv.Itoa(sleeper.Process.Pid))
	run(n, "addr", "add", nAddr, "dev", nName)
	run(n, "link", "set", nName, "up")
	run(peer, "addr", "add", peerAddr, "dev", peerName)
	run(peer, "link", "set", peerName, "up")
}
