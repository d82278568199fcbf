package cgroups

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// inCI is nettest.InCI, which this package's tests cannot import: nettest
// needs probe, and probe imports cgroups for its filter.
func inCI() bool { return os.Getenv("CI") == "true" }

// noSuchID is no directory's inode in the test trees.
const noSuchID = 1<<63 + 12345

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// fakeTree makes directories under a temporary root, as a cgroup2 mount
// would have them, and returns the root and each path's id ("/" included).
func fakeTree(t *testing.T, paths ...string) (string, map[string]uint64) {
	t.Helper()
	root := t.TempDir()
	ids := map[string]uint64{"/": inode(t, root)}
	for _, p := range paths {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
		// Parents too: the walk finds them, and they have ids.
		for q := p; q != "/"; q = filepath.Dir(q) {
			ids[q] = inode(t, filepath.Join(root, q))
		}
	}
	// A file, as cgroup directories have them: not a cgroup.
	if err := os.WriteFile(filepath.Join(root, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return root, ids
}

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func newFakeClock() *fakeClock           { return &fakeClock{time.Unix(1_700_000_000, 0)} }
func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }

func (r *Resolver) withClock(c *fakeClock) *Resolver {
	r.Now = c.now
	return r
}

func (r *Resolver) walkCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.walks
}

func (r *Resolver) cacheLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.paths)
}

var treePaths = []string{
	"/init.scope",
	"/system.slice/nginx.service",
	"/system.slice/docker-" + dockerID + ".scope",
	"/user.slice/user-1000.slice/session-1.scope",
	"/kubepods/besteffort/pod" + podUID + "/" + ctrdID,
}

func TestResolverPath(t *testing.T) {
	root, ids := fakeTree(t, treePaths...)
	r := NewResolver(root)
	if r.Root() != root || r.Err() != nil {
		t.Fatalf("Root() = %q, Err() = %v; want %q, nil", r.Root(), r.Err(), root)
	}
	for path, id := range ids {
		if got, ok := r.Path(id); !ok || got != path {
			t.Errorf("Path(%d) = %q, %v; want %q", id, got, ok, path)
		}
	}
	// The first miss walked and cached every cgroup: the rest were hits.
	if n := r.walkCount(); n != 1 {
		t.Errorf("%d walks, want 1", n)
	}
	if n := r.cacheLen(); n != len(ids) {
		t.Errorf("%d cached, want %d", n, len(ids))
	}

	if c, ok := r.Container(ids["/system.slice/docker-"+dockerID+".scope"]); !ok || c != (Container{RuntimeDocker, dockerID}) {
		t.Errorf("Container(docker scope) = %+v, %v", c, ok)
	}
	if c, ok := r.Container(ids["/kubepods/besteffort/pod"+podUID+"/"+ctrdID]); !ok || c != (Container{RuntimeContainerd, ctrdID}) {
		t.Errorf("Container(kubepods) = %+v, %v", c, ok)
	}
	if c, ok := r.Container(ids["/system.slice/nginx.service"]); ok {
		t.Errorf("Container(nginx.service) = %+v, true", c)
	}
	if _, ok := r.Container(noSuchID); ok {
		t.Errorf("Container(unknown id) = true")
	}
}

func TestResolverRootWithSlash(t *testing.T) {
	root, ids := fakeTree(t, "/system.slice/nginx.service")
	r := NewResolver(root + "/")
	if got, ok := r.Path(ids["/system.slice/nginx.service"]); !ok || got != "/system.slice/nginx.service" {
		t.Errorf("Path = %q, %v", got, ok)
	}
	if got, ok := r.Path(ids["/"]); !ok || got != "/" {
		t.Errorf("Path(root) = %q, %v", got, ok)
	}
}

func TestResolverWalkRateLimit(t *testing.T) {
	root, ids := fakeTree(t, treePaths...)
	clock := newFakeClock()
	r := NewResolver(root).withClock(clock)
	walks := func(want int) {
		t.Helper()
		if n := r.walkCount(); n != want {
			t.Fatalf("%d walks, want %d", n, want)
		}
	}

	if _, ok := r.Path(noSuchID); ok {
		t.Fatal("Path(unknown id) = true")
	}
	walks(1) // the first miss walks
	r.Path(noSuchID)
	walks(1)
	clock.add(DefaultMinWalkInterval - time.Millisecond)
	r.Path(noSuchID)
	walks(1)

	// A cgroup made after the walk is not found until the interval has
	// passed since that walk, then the next miss finds it.
	born := filepath.Join(root, "system.slice", "late.service")
	if err := os.Mkdir(born, 0o755); err != nil {
		t.Fatal(err)
	}
	bornID := inode(t, born)
	if _, ok := r.Path(bornID); ok {
		t.Fatal("found a cgroup without walking")
	}
	walks(1)
	clock.add(time.Millisecond)
	if got, ok := r.Path(bornID); !ok || got != "/system.slice/late.service" {
		t.Fatalf("Path(new cgroup) = %q, %v", got, ok)
	}
	walks(2)

	// Hits never walk, nor does id 0, the unknown owner.
	clock.add(time.Hour)
	for _, id := range ids {
		r.Path(id)
	}
	r.Path(0)
	walks(2)

	// A cgroup removed stays resolvable: its id is not reused.
	if err := os.Remove(born); err != nil {
		t.Fatal(err)
	}
	if got, ok := r.Path(bornID); !ok || got != "/system.slice/late.service" {
		t.Fatalf("Path(removed cgroup) = %q, %v", got, ok)
	}

	// A clock that steps back does not stop walks until it catches up.
	r.Path(noSuchID)
	walks(3)
	clock.add(-time.Hour)
	r.Path(noSuchID)
	walks(4)

	// Zero interval: every miss walks.
	r.MinWalkInterval = 0
	r.Path(noSuchID)
	r.Path(noSuchID)
	walks(6)
}

func TestResolverCacheBound(t *testing.T) {
	var paths []string
	for i := range 40 {
		paths = append(paths, fmt.Sprintf("/system.slice/unit%d.service/child", i))
	}
	root, ids := fakeTree(t, paths...)
	if len(ids) < 50 {
		t.Fatalf("tree has %d cgroups, want more", len(ids))
	}
	const limit = 7
	clock := newFakeClock()
	r := NewResolver(root).withClock(clock)
	r.MaxEntries = limit
	r.MinWalkInterval = 0 // every miss walks: the bound must hold anyway

	for range 3 {
		for path, id := range ids {
			// Even when the tree overflows the cache, the walk keeps the
			// id looked up.
			if got, ok := r.Path(id); !ok || got != path {
				t.Fatalf("Path(%d) = %q, %v; want %q", id, got, ok, path)
			}
			if n := r.cacheLen(); n > limit {
				t.Fatalf("cache holds %d entries, bound is %d", n, limit)
			}
			// Just resolved: a hit, no walk.
			before := r.walkCount()
			if _, ok := r.Path(id); !ok || r.walkCount() != before {
				t.Fatalf("repeated Path(%d) missed the cache", id)
			}
		}
	}
	if n := r.cacheLen(); n != limit {
		t.Errorf("cache holds %d entries, want it full at %d", n, limit)
	}
}

func TestResolverDefaults(t *testing.T) {
	r := NewResolver(t.TempDir())
	if r.MinWalkInterval != DefaultMinWalkInterval || r.MaxEntries != DefaultMaxEntries || r.Now == nil {
		t.Errorf("defaults: interval %v, max %d, clock set %v", r.MinWalkInterval, r.MaxEntries, r.Now != nil)
	}

	// An empty root is the cgroup2 mount, as probe finds it.
	mount, err := Mount()
	r = NewResolver("")
	if r.Root() != mount || (err == nil) != (r.Err() == nil) {
		t.Errorf("NewResolver(\"\"): Root() = %q, Err() = %v; want %q, %v", r.Root(), r.Err(), mount, err)
	}

	// Without a mount nothing resolves, and nothing is walked.
	r = &Resolver{}
	if _, ok := r.Path(1); ok {
		t.Error("a resolver without a root resolved an id")
	}
	// A missing root is no error, just no cgroups.
	r = NewResolver(filepath.Join(t.TempDir(), "gone"))
	if _, ok := r.Path(1); ok {
		t.Error("a resolver with a missing root resolved an id")
	}
}

func TestResolverConcurrent(t *testing.T) {
	root, ids := fakeTree(t, treePaths...)
	r := NewResolver(root)
	r.MaxEntries = 3
	r.MinWalkInterval = 0
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				for path, id := range ids {
					if got, ok := r.Path(id); !ok || got != path {
						t.Errorf("Path(%d) = %q, %v; want %q", id, got, ok, path)
						return
					}
				}
				r.Path(noSuchID)
			}
		})
	}
	wg.Wait()
}

// TestRealCgroup2 resolves a cgroup it creates in the host's cgroup2
// hierarchy. It needs root; without it the test skips, except in CI
// (CI=true), where it fails.
func TestRealCgroup2(t *testing.T) {
	if os.Geteuid() != 0 {
		if inCI() {
			t.Fatal("CI=true and not root: creating a cgroup needs root")
		}
		t.Skip("needs root to create a cgroup")
	}
	mount, err := Mount()
	if err != nil {
		if inCI() {
			t.Fatalf("CI=true and no cgroup v2: %v", err)
		}
		t.Skipf("no cgroup v2: %v", err)
	}
	dir, err := os.MkdirTemp(mount, "tcpfsm-test-")
	if err != nil {
		t.Fatalf("create a cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
	// A child named as docker's systemd driver names containers.
	child := filepath.Join(dir, "docker-"+dockerID+".scope")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatalf("create a cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.Remove(child); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})

	r := NewResolver("")
	if r.Root() != mount {
		t.Fatalf("Root() = %q, want %q (%v)", r.Root(), mount, r.Err())
	}
	rel := "/" + filepath.Base(dir)
	if got, ok := r.Path(inode(t, dir)); !ok || got != rel {
		t.Errorf("Path(new cgroup) = %q, %v; want %q", got, ok, rel)
	}
	if c, ok := r.Container(inode(t, child)); !ok || c != (Container{RuntimeDocker, dockerID}) {
		t.Errorf("Container(new docker-like cgroup) = %+v, %v", c, ok)
	}
	if got, ok := r.Path(inode(t, mount)); !ok || got != "/" {
		t.Errorf("Path(root cgroup) = %q, %v; want /", got, ok)
	}

	// This process's own cgroup, as the kernel names it.
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if own, ok := strings.CutPrefix(line, "0::"); ok {
			if got, ok := r.Path(inode(t, filepath.Join(mount, own))); !ok || got != own {
				t.Errorf("Path(own cgroup) = %q, %v; want %q", got, ok, own)
			}
		}
	}
}
