package metadata

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeSource is a runtime in memory: the resolver's logic on its own,
// beside the tests against a real containerd (package cri).
type fakeSource struct {
	mu     sync.Mutex
	metas  []Meta
	err    error
	lists  int
	gate   chan struct{} // when set, each List waits for a value
	listed chan struct{} // gets a value after each List
}

func newFake(metas ...Meta) *fakeSource {
	return &fakeSource{metas: metas, listed: make(chan struct{}, 100)}
}

func (f *fakeSource) Runtime() string  { return "containerd" }
func (f *fakeSource) Endpoint() string { return "fake" }
func (f *fakeSource) Close() error     { return nil }
func (f *fakeSource) List(ctx context.Context) ([]Meta, error) {
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer func() { f.listed <- struct{}{} }()
	defer f.mu.Unlock()
	f.lists++
	if f.err != nil {
		return nil, f.err
	}
	return append([]Meta(nil), f.metas...), nil
}

func (f *fakeSource) set(metas []Meta, err error) {
	f.mu.Lock()
	f.metas, f.err = metas, err
	f.mu.Unlock()
}

func (f *fakeSource) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lists
}

func ctr(id, name string) Meta {
	return Meta{ID: id, Name: name, Pod: Pod{Namespace: "ns", Name: "pod-" + name}}
}

func key(id string) Key { return Key{Runtime: "containerd", ID: id} }

func synced(t *testing.T, r *Resolver) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond for up to 5s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("not within 5s: %s", what)
}

func TestLookupAfterFirstList(t *testing.T) {
	f := newFake(ctr("a", "web"), ctr("b", "db"))
	r := New(Config{}, f)
	defer r.Close()
	synced(t, r)
	m, ok := r.Lookup(key("a"))
	if !ok || m.Name != "web" || m.Runtime != "containerd" || m.Pod.Name != "pod-web" {
		t.Fatalf("Lookup(a) = %+v, %v", m, ok)
	}
	if _, ok := r.Lookup(Key{Runtime: "docker", ID: "a"}); ok {
		t.Error("a containerd id was found for docker")
	}
	st := r.Stats()
	if st.Lookups != 2 || st.Hits != 1 || st.Misses != 1 || st.Entries != 2 {
		t.Errorf("stats %+v", st)
	}
}

// Misses while a list runs share the next list; misses keep lists at
// least MinRefreshInterval apart.
func TestMissesCoalesce(t *testing.T) {
	f := newFake(ctr("a", "web"))
	r := New(Config{MinRefreshInterval: 300 * time.Millisecond}, f)
	defer r.Close()
	synced(t, r)
	<-f.listed

	f.mu.Lock()
	f.gate = make(chan struct{})
	f.mu.Unlock()
	r.Lookup(key("x0")) // starts list 2, which waits at the gate
	eventually(t, "list 2 started", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.sources[0].pending) == 0
	})
	for i := range 100 {
		r.Lookup(key("y" + string(rune('a'+i%26)) + string(rune('a'+i/26))))
	}
	close(f.gate) // list 2 and then one list for all 100 misses
	<-f.listed
	<-f.listed
	time.Sleep(500 * time.Millisecond)
	if n := f.count(); n != 3 {
		t.Errorf("%d lists, want 3: the start, the first miss, one for the 100 misses during it", n)
	}
	st := r.Stats()
	if st.Misses != 101 {
		t.Errorf("misses = %d, want 101", st.Misses)
	}
	// The ids the runtime did not know are remembered: no list for them.
	for range 10 {
		r.Lookup(key("x0"))
	}
	time.Sleep(400 * time.Millisecond)
	if n := f.count(); n != 3 {
		t.Errorf("%d lists after repeated misses of an absent id, want still 3", n)
	}
}

func TestRefreshRateLimited(t *testing.T) {
	f := newFake()
	r := New(Config{MinRefreshInterval: 200 * time.Millisecond, AbsentTTL: time.Millisecond}, f)
	defer r.Close()
	synced(t, r)
	start := time.Now()
	for i := 0; time.Since(start) < time.Second; i++ {
		r.Lookup(key(string(rune('a' + i%26))))
		time.Sleep(time.Millisecond)
	}
	// 1s of misses at 200ms: at most 1 + 5 lists (and the start's).
	if n := f.count(); n < 3 || n > 7 {
		t.Errorf("%d lists in 1s of misses with MinRefreshInterval 200ms, want 3..7", n)
	}
}

func TestEvictionCounted(t *testing.T) {
	f := newFake(ctr("a", "1"), ctr("b", "2"), ctr("c", "3"), ctr("d", "4"), ctr("e", "5"))
	r := New(Config{MaxEntries: 3}, f)
	defer r.Close()
	synced(t, r)
	st := r.Stats()
	if st.Entries != 3 || st.Evictions != 2 {
		t.Errorf("entries %d, evictions %d; want 3, 2", st.Entries, st.Evictions)
	}
	// The most recently listed are kept.
	for _, id := range []string{"c", "d", "e"} {
		if _, ok := r.Lookup(key(id)); !ok {
			t.Errorf("%s evicted", id)
		}
	}
}

// A removed container stays named for TTL after the list that missed it.
func TestRemovedContainerExpires(t *testing.T) {
	f := newFake(ctr("a", "web"), ctr("b", "db"))
	r := New(Config{TTL: 300 * time.Millisecond, ResyncInterval: 50 * time.Millisecond}, f)
	defer r.Close()
	synced(t, r)
	f.set([]Meta{ctr("b", "db")}, nil)
	// Known() leaves a out once a resync no longer had it.
	eventually(t, "a resync without a", func() bool { return len(r.Known()) == 1 })
	if m, ok := r.Lookup(key("a")); !ok || m.Name != "web" {
		t.Fatalf("Lookup(a) right after its removal = %+v, %v: want it named for TTL", m, ok)
	}
	time.Sleep(400 * time.Millisecond)
	if _, ok := r.Lookup(key("a")); ok {
		t.Error("a still named TTL after its removal")
	}
	if _, ok := r.Lookup(key("b")); !ok {
		t.Error("b, still listed, expired")
	}
	if st := r.Stats(); st.Expirations != 1 {
		t.Errorf("expirations = %d, want 1", st.Expirations)
	}
}

func TestWait(t *testing.T) {
	f := newFake(ctr("a", "web"))
	r := New(Config{MinRefreshInterval: 10 * time.Millisecond, MaxWaiters: 2}, f)
	synced(t, r)

	got := make(chan string, 10)
	answer := func(tag string) func(Meta, bool) {
		return func(m Meta, ok bool) {
			if ok {
				got <- tag + ":" + m.Name
			} else {
				got <- tag + ":-"
			}
		}
	}
	// Known: answered at once, on the caller's goroutine.
	r.Wait(key("a"), time.Second, answer("known"))
	if g := <-got; g != "known:web" {
		t.Errorf("Wait(known) = %s", g)
	}
	// Appears in the next list.
	f.set([]Meta{ctr("a", "web"), ctr("n", "new")}, nil)
	r.Wait(key("n"), 5*time.Second, answer("new"))
	if g := <-got; g != "new:new" {
		t.Errorf("Wait(new) = %s", g)
	}
	// The runtime does not know it: answered after the list, not at the limit.
	start := time.Now()
	r.Wait(key("zz"), 5*time.Second, answer("unknown"))
	if g := <-got; g != "unknown:-" || time.Since(start) > 2*time.Second {
		t.Errorf("Wait(unknown) = %s after %v", g, time.Since(start))
	}
	// The runtime is away: the limit answers.
	f.set(nil, syscall.ECONNREFUSED)
	r.Wait(key("p"), 200*time.Millisecond, answer("away1"))
	r.Wait(key("q"), 200*time.Millisecond, answer("away2"))
	r.Wait(key("s"), 200*time.Millisecond, answer("dropped")) // MaxWaiters 2
	if g := <-got; g != "dropped:-" {
		t.Errorf("third pending Wait = %s, want dropped at once", g)
	}
	for range 2 {
		if g := <-got; !strings.HasPrefix(g, "away") || !strings.HasSuffix(g, ":-") {
			t.Errorf("Wait with the runtime away = %s", g)
		}
	}
	// Close answers what is pending.
	r.Wait(key("c"), time.Hour, answer("close"))
	r.Close()
	if g := <-got; g != "close:-" {
		t.Errorf("Wait pending at Close = %s", g)
	}
	st := r.Stats()
	if st.WaitsResolved != 2 || st.WaitsTimedOut != 2 || st.WaitsDropped != 1 || st.WaitsUnknown != 2 || st.WaitsPending != 0 {
		t.Errorf("waits: resolved %d timed out %d dropped %d unknown %d pending %d; want 2 2 1 2 0",
			st.WaitsResolved, st.WaitsTimedOut, st.WaitsDropped, st.WaitsUnknown, st.WaitsPending)
	}
}

// Failures: counted by reason, one warning per reason, cache kept;
// back: an info, names again, and a later failure warns again.
func TestFailuresAndRecovery(t *testing.T) {
	var logs syncBuffer
	f := newFake(ctr("a", "web"))
	r := New(Config{
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, ResyncInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}, f)
	defer r.Close()
	synced(t, r)

	f.set(nil, &Error{Reason: ReasonPermissionDenied, Err: syscall.EACCES})
	eventually(t, "5 permission errors", func() bool { return r.Stats().Sources[0].Errors[ReasonPermissionDenied] >= 5 })
	f.set(nil, syscall.ENOENT)
	eventually(t, "3 socket_missing errors", func() bool { return r.Stats().Sources[0].Errors[ReasonSocketMissing] >= 3 })
	if m, ok := r.Lookup(key("a")); !ok || m.Name != "web" {
		t.Errorf("Lookup(a) while failing = %+v, %v; want the cached entry", m, ok)
	}
	if r.Stats().Sources[0].Up {
		t.Error("source up while failing")
	}
	f.set([]Meta{ctr("a", "web"), ctr("b", "db")}, nil)
	eventually(t, "b known after recovery", func() bool { _, ok := r.Lookup(key("b")); return ok })
	f.set(nil, syscall.ENOENT)
	eventually(t, "a new outage", func() bool { return !r.Stats().Sources[0].Up })
	time.Sleep(50 * time.Millisecond)

	out := logs.String()
	for _, want := range []struct {
		text string
		n    int
	}{
		{"reason=permission_denied", 1},
		{"reason=socket_missing", 2}, // once per outage
		{"runtime is back", 1},
	} {
		if n := strings.Count(out, want.text); n != want.n {
			t.Errorf("%q logged %d times, want %d:\n%s", want.text, n, want.n, out)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestReasonOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Reason
	}{
		{syscall.ENOENT, ReasonSocketMissing},
		{&Error{Reason: ReasonUnsupportedAPI, Err: syscall.ENOENT}, ReasonUnsupportedAPI},
		{syscall.EACCES, ReasonPermissionDenied},
		{syscall.ECONNREFUSED, ReasonUnavailable},
		{context.DeadlineExceeded, ReasonTimeout},
		{Errorf(ReasonBadResponse, "x"), ReasonBadResponse},
		{syscall.EINVAL, ReasonOther},
	} {
		if got := ReasonOf(tc.err); got != tc.want {
			t.Errorf("ReasonOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// Lookup is called from the metrics' event path: a hit must not allocate.
func TestLookupDoesNotAllocate(t *testing.T) {
	f := newFake(ctr("a", "web"))
	r := New(Config{}, f)
	defer r.Close()
	synced(t, r)
	k := key("a")
	if n := testing.AllocsPerRun(1000, func() { r.Lookup(k) }); n != 0 {
		t.Errorf("Lookup hit: %v allocations, want 0", n)
	}
}

func BenchmarkLookupHit(b *testing.B) {
	var metas []Meta
	for i := range 1000 {
		metas = append(metas, ctr(string(rune(0x4e00+i)), "c"))
	}
	f := newFake(metas...)
	r := New(Config{}, f)
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.WaitSynced(ctx); err != nil {
		b.Fatal(err)
	}
	k := key(string(rune(0x4e00 + 500)))
	b.ReportAllocs()
	for b.Loop() {
		r.Lookup(k)
	}
}

// PodIPs hands out the sandboxes with IPs when they changed, and nothing
// (no allocation) while they did not.
func TestPodIPs(t *testing.T) {
	sb := func(id, ip string) Meta {
		return Meta{ID: id, Sandbox: true, Pod: Pod{Namespace: "ns", Name: "pod-" + id, IP: netip.MustParseAddr(ip)}}
	}
	f := newFake(sb("s2", "10.0.0.2"), sb("s1", "10.0.0.1"), ctr("c", "web"))
	r := New(Config{ResyncInterval: 20 * time.Millisecond}, f)
	defer r.Close()
	synced(t, r)
	gen, ips := r.PodIPs(0)
	if gen == 0 || len(ips) != 2 || ips[0].ID != "s1" || ips[1].ID != "s2" {
		t.Fatalf("PodIPs(0) = %d, %+v: want both sandboxes, by IP", gen, ips)
	}
	lists := f.count()
	eventually(t, "a resync", func() bool { return f.count() > lists+1 })
	if g, again := r.PodIPs(gen); g != gen || again != nil {
		t.Errorf("unchanged: PodIPs = %d, %v", g, again)
	}
	if n := testing.AllocsPerRun(100, func() { r.PodIPs(gen) }); n != 0 {
		t.Errorf("PodIPs unchanged allocates %.0f times", n)
	}
	f.set([]Meta{sb("s1", "10.0.0.1"), sb("s3", "10.0.0.2")}, nil)
	eventually(t, "the new sandbox", func() bool { g, _ := r.PodIPs(gen); return g != gen })
	if g, ips := r.PodIPs(gen); len(ips) != 2 || ips[1].ID != "s3" || g == gen {
		t.Errorf("after the change: %d, %+v", g, ips)
	}
}
