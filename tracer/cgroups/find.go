package cgroups

import (
	"io/fs"
	"path/filepath"
	"strings"
)

// FindContainers walks the cgroup2 hierarchy at root (Mount's) and
// returns the path, relative to root, of the outermost cgroup of each
// container want accepts: the cgroup a runtime made for it, not the
// children its payload made. A pod's containers have one parent: the
// pod's cgroup.
func FindContainers(root string, want func(Container) bool) []string {
	root = filepath.Clean(root)
	var out []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil //nolint:nilerr // cgroups come and go during the walk: skip, go on
		}
		rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
		if c, ok := ParseContainer(rel); ok && want(c) {
			out = append(out, rel)
			return fs.SkipDir
		}
		return nil
	})
	return out
}
