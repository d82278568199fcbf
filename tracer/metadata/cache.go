package metadata

import (
	"container/list"
	"time"
)

// cache is a bounded LRU of container metadata, and of ids the runtime
// said it does not know (so that a stream of records from a vanished
// container does not make a list call each).
//
// A live container's metadata never changes, so entries do not age while
// the runtime still lists them: TTL counts from the first list that no
// longer had the container, which keeps late records of a removed
// container named for that long. While the runtime is unreachable nothing
// is learnt and nothing is marked gone, so what is cached keeps being
// served. Not safe for concurrent use: the Resolver locks.
type cache struct {
	max     int
	ttl     time.Duration
	entries map[Key]*list.Element // of *entry
	lru     list.List             // front: most recently used

	evictions, expirations uint64
}

type entry struct {
	key  Key
	meta Meta
	// absent: the runtime did not know the id at the last list (a
	// negative entry, until goneAt+absentTTL).
	absent bool
	// goneAt: when a list first missed the container; zero while listed.
	goneAt time.Time
	// listGen is the generation of the last list that had it.
	listGen uint64
}

func newCache(maxEntries int, ttl time.Duration) *cache {
	return &cache{max: maxEntries, ttl: ttl, entries: make(map[Key]*list.Element)}
}

func (c *cache) len() int { return len(c.entries) }

// get returns the live entry for k, nil when there is none; it counts an
// entry that expired.
func (c *cache) get(k Key, now time.Time, absentTTL time.Duration) *entry {
	el, ok := c.entries[k]
	if !ok {
		return nil
	}
	e := el.Value.(*entry)
	if c.expired(e, now, absentTTL) {
		c.remove(el)
		c.expirations++
		return nil
	}
	c.lru.MoveToFront(el)
	return e
}

func (c *cache) expired(e *entry, now time.Time, absentTTL time.Duration) bool {
	if e.goneAt.IsZero() {
		return false
	}
	ttl := c.ttl
	if e.absent {
		ttl = absentTTL
	}
	return now.Sub(e.goneAt) >= ttl
}

// put stores a container the runtime listed in generation gen.
func (c *cache) put(m Meta, gen uint64) {
	k := Key{Runtime: m.Runtime, ID: m.ID}
	if el, ok := c.entries[k]; ok {
		e := el.Value.(*entry)
		*e = entry{key: k, meta: m, listGen: gen}
		c.lru.MoveToFront(el)
		return
	}
	c.entries[k] = c.lru.PushFront(&entry{key: k, meta: m, listGen: gen})
	c.trim()
}

// putAbsent remembers that the runtime does not know k.
func (c *cache) putAbsent(k Key, now time.Time) {
	if _, ok := c.entries[k]; ok {
		return
	}
	c.entries[k] = c.lru.PushFront(&entry{key: k, absent: true, goneAt: now})
	c.trim()
}

func (c *cache) trim() {
	for len(c.entries) > c.max {
		c.remove(c.lru.Back())
		c.evictions++
	}
}

func (c *cache) remove(el *list.Element) {
	delete(c.entries, el.Value.(*entry).key)
	c.lru.Remove(el)
}

// listed ends a successful list of runtime's containers in generation
// gen: entries of that runtime the list did not have are marked gone,
// and entries gone for longer than their TTL are dropped.
func (c *cache) listed(runtime string, gen uint64, now time.Time, absentTTL time.Duration) {
	for el := c.lru.Front(); el != nil; {
		next := el.Next()
		e := el.Value.(*entry)
		if e.key.Runtime == runtime && !e.absent && e.listGen != gen && e.goneAt.IsZero() {
			e.goneAt = now
		}
		if c.expired(e, now, absentTTL) {
			c.remove(el)
			c.expirations++
		}
		el = next
	}
}
