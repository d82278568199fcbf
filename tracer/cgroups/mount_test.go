package cgroups

import "testing"

// A cgroup's path gives back the id its walk found: ID and Path agree on
// what a cgroup id is.
func TestIDAndPathAgree(t *testing.T) {
	root, ids := fakeTree(t, treePaths...)
	r := NewResolver(root)
	for path, id := range ids {
		if got := r.ID(path); got != id {
			t.Errorf("ID(%q) = %d, want %d", path, got, id)
		}
		if got, ok := r.Path(id); !ok || got != path {
			t.Errorf("Path(%d) = %q %v, want %q", id, got, ok, path)
		}
	}
	if id := r.ID("/no/such/cgroup"); id != 0 {
		t.Errorf("ID of a missing cgroup: %d", id)
	}
	if id := r.ID(""); id != 0 {
		t.Errorf("ID of no path: %d", id)
	}
	if id := NewResolver("/nonexistent-cgroup-root").ID("/"); id != 0 {
		t.Errorf("ID under a missing root: %d", id)
	}
}

func TestContainerString(t *testing.T) {
	c, ok := ParseContainer("/system.slice/docker-" + dockerID + ".scope")
	if !ok || c.String() != "docker:"+dockerID {
		t.Errorf("container %q %v", c.String(), ok)
	}
}
