package cgroups

import (
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

const (
	// DefaultMinWalkInterval is how often, at most, a miss walks the tree.
	DefaultMinWalkInterval = time.Second
	// DefaultMaxEntries bounds the cache: an entry is a path string and a
	// map slot, 100 to 200 bytes, so about 10 MB at worst. Hosts rarely
	// have more than a few thousand cgroups alive.
	DefaultMaxEntries = 1 << 16
)

// Resolver maps cgroup v2 ids, as bpf_get_current_cgroup_id() reports
// them, to cgroup paths. The id of a cgroup is the inode number of its
// directory in the cgroup2 file system; a 64-bit kernel does not reuse
// ids (64-bit kernfs ids since Linux 5.5), so a cached path stays right after
// its cgroup is removed, and late events of a vanished cgroup still
// resolve.
//
// A miss walks the whole tree and caches every cgroup seen, but no more
// often than MinWalkInterval: a busy host has many connections from
// cgroups that are already gone, and each would otherwise cost a walk. A
// cgroup created just after a walk may therefore stay unresolved for up
// to MinWalkInterval.
//
// A Resolver is safe for concurrent use once its exported fields are set,
// which must happen before the first lookup. A walk holds its lock, so
// lookups wait for it rather than start walks of their own.
type Resolver struct {
	// MinWalkInterval is the least time between two walks; zero walks on
	// every miss.
	MinWalkInterval time.Duration
	// MaxEntries bounds the cache (zero or less: DefaultMaxEntries).
	// When it is full, adding an entry evicts an arbitrary one (Go's map
	// order): cheap, and an evicted live cgroup comes back with the next
	// walk; only a dead one's path is lost. A walk of a tree larger than
	// the cache keeps a part of it, and always the id looked up.
	MaxEntries int
	// Now is the clock the walk interval is measured with (nil: time.Now).
	Now func() time.Time

	root string
	err  error

	mu       sync.Mutex
	paths    map[uint64]string
	lastWalk time.Time
	walked   bool
	walks    int // walks done, for tests
}

// NewResolver returns a resolver for the cgroup2 hierarchy mounted at
// root; an empty root finds the mount from /proc/self/mountinfo. When none
// is found the resolver resolves nothing and Err says why.
func NewResolver(root string) *Resolver {
	r := &Resolver{
		MinWalkInterval: DefaultMinWalkInterval,
		MaxEntries:      DefaultMaxEntries,
		Now:             time.Now,
		paths:           make(map[uint64]string),
	}
	if root == "" {
		root, r.err = Mount()
	}
	if root != "" {
		r.root = filepath.Clean(root)
	}
	return r
}

// Root is the cgroup2 mount the resolver walks, empty when none was found.
func (r *Resolver) Root() string { return r.root }

// Err reports why the resolver has no cgroup2 mount to walk, or nil.
func (r *Resolver) Err() error { return r.err }

// Path returns the path, relative to the cgroup2 mount, of the cgroup
// with this id: "/" for the root, "/system.slice/nginx.service" for a
// service. It is false for an id not found (0 is no cgroup).
func (r *Resolver) Path(id uint64) (string, bool) {
	if id == 0 || r.root == "" {
		return "", false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.paths[id]; ok {
		return p, true
	}
	now := r.now()
	// A clock that went backwards allows a walk rather than none for long.
	if since := now.Sub(r.lastWalk); r.walked && since >= 0 && since < r.MinWalkInterval {
		return "", false
	}
	r.walked, r.lastWalk = true, now
	return r.walk(id)
}

// Container returns the container the cgroup with this id belongs to.
func (r *Resolver) Container(id uint64) (Container, bool) {
	p, ok := r.Path(id)
	if !ok {
		return Container{}, false
	}
	return ParseContainer(p)
}

func (r *Resolver) now() time.Time {
	if r.Now == nil {
		return time.Now()
	}
	return r.Now()
}

// walk caches every cgroup under the root and returns the path of want.
func (r *Resolver) walk(want uint64) (string, bool) {
	r.walks++
	var found string
	_ = filepath.WalkDir(r.root, func(p string, d fs.DirEntry, err error) error {
		// Cgroups come and go during the walk: skip what cannot be read.
		if err != nil || !d.IsDir() {
			return nil //nolint:nilerr // skip it, walk on
		}
		info, err := d.Info()
		if err != nil {
			return nil //nolint:nilerr // removed since it was listed
		}
		id := idOf(info)
		if id == 0 {
			return nil
		}
		rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, r.root), "/")
		if id == want {
			found = rel
		}
		r.add(id, rel)
		return nil
	})
	if found == "" {
		return "", false
	}
	// Added last, so a walk that overflows the cache cannot evict it.
	r.add(want, found)
	return found, true
}

// add caches a path, evicting an arbitrary entry when the cache is full.
func (r *Resolver) add(id uint64, path string) {
	limit := r.MaxEntries
	if limit <= 0 {
		limit = DefaultMaxEntries
	}
	if _, ok := r.paths[id]; !ok && len(r.paths) >= limit {
		for k := range r.paths {
			delete(r.paths, k)
			break
		}
	}
	r.paths[id] = path
}
