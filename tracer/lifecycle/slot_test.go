package lifecycle

import (
	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
	"reflect"
	"testing"
	"unsafe"
)

// TestSlotCoreIsRecordPrefix: Builder.fill copies a slot's core over a Record's
// first fields, which must be core's, in its order, at its offsets.
func TestSlotCoreIsRecordPrefix(t *testing.T) {
	ct, rt := reflect.TypeFor[core](), reflect.TypeFor[Record]()
	for k := range ct.NumField() {
		cf, rf := ct.Field(k), rt.Field(k)
		if cf.Name != rf.Name || cf.Type != rf.Type || cf.Offset != rf.Offset {
			t.Fatalf("field %d: core %s %s at %d, Record %s %s at %d", k, cf.Name, cf.Type, cf.Offset, rf.Name, rf.Type, rf.Offset)
		}
	}
	if next := rt.Field(ct.NumField()); next.Offset < ct.Size() {
		t.Fatalf("Record.%s at %d, inside core's %d bytes", next.Name, next.Offset, ct.Size())
	}
	// Every other Record field is filled by slot.record.
	for k := ct.NumField(); k < rt.NumField(); k++ {
		switch n := rt.Field(k).Name; n {
		case "alias", "foundAt", "lostAtStart", "TimeWaitExit", "heldUntil", "twSeen", "twExpected", "orphanAt", "finAt",
			"Pid", "Comm", "CgroupID", "Spans", "Cgroup", "Container", "Emitted", "Meta", "Peer":
		default:
			t.Errorf("Record.%s: not in core, not filled by Builder.fill", n)
		}
	}
	t.Logf("Record %d B, slot %d B", unsafe.Sizeof(Record{}), unsafe.Sizeof(slot{}))
}

// TestSlotHasNoPadding: the bytes per tracked connection (BENCHMARKS.md,
// issue 12's 300 B) count on the slot and its core having no holes, and
// on the slot's size: a field added or reordered that leaves a hole, or
// grows the slot, shows here before it shows in make bench-memory.
func TestSlotHasNoPadding(t *testing.T) {
	for _, ty := range []reflect.Type{reflect.TypeFor[core](), reflect.TypeFor[slot]()} {
		var end uintptr
		for k := range ty.NumField() {
			f := ty.Field(k)
			if f.Offset != end {
				t.Errorf("%s: %d bytes of padding before %s", ty.Name(), f.Offset-end, f.Name)
			}
			end = f.Offset + f.Type.Size()
		}
		if ty.Size() != end {
			t.Errorf("%s: %d bytes of padding at the end (%d of %d used)", ty.Name(), ty.Size()-end, end, ty.Size())
		}
	}
	if got, want := unsafe.Sizeof(slot{}), uintptr(208); got != want {
		t.Errorf("slot is %d B, want %d (BENCHMARKS.md's memory figures are for %d)", got, want, want)
	}
}

// attacher attaches a Meta at Closed, as the session's metadata stage does.
type attacher struct {
	sink
	m metadata.Meta
}

func (a *attacher) Closed(r *Record) {
	r.Meta = &a.m
	a.sink.Closed(r)
}

// TestSlotsLetGoOfWhatTheyHoldOutside: closings, owners, exits apart,
// attached names and registrations go with the records.
func TestSlotsLetGoOfWhatTheyHoldOutside(t *testing.T) {
	a := &attacher{}
	b := NewBuilder(Config{}, a)
	const n = 3000
	for k := uint64(0); k < n; k++ {
		c, s := 2*k+1, 2*k+2 // client, server
		port := func(e probe.Event) probe.Event {
			if e.Sport == 40000 {
				e.Sport = uint16(10000 + k)
			} else {
				e.Dport = uint16(10000 + k)
			}
			e.Pid += uint32(k % 7) // a few owners
			return e
		}
		at := 10 * k
		evs := []probe.Event{
			st(c, at+1, CLOSE, SS, withOwner(probe.OwnerTask, 100, "client")),
			st(s, at+2, LST, SR, withOwner(probe.OwnerListener, 200, "server")),
			st(c, at+3, SS, EST, withFlags(probe.FlagSynAcked)),
			st(s, at+3, SR, EST),
			st(c, at+4, EST, FW1),
			st(s, at+4, EST, CW),
			st(c, at+5, FW1, FW2),
			st(s, at+5, CW, LA),
			st(s, at+6, LA, CLOSE),
			st(c, at+6, FW2, CLOSE, withFlags(probe.FlagTimeWait)),
		}
		if k%10 == 0 { // more states than MaxSpans: exits kept apart
			evs = evs[:2]
			for j := uint64(0); j < MaxSpans; j++ {
				evs = append(evs, st(c, at+3+j, SS, SS))
			}
		}
		for i := range evs {
			e := port(evs[i])
			b.Event(&e)
		}
	}
	if len(b.exits) == 0 || b.closings.used == 0 || len(b.ownerOf) == 0 {
		t.Fatalf("nothing outside the slots: exits %d closings %d owners %d", len(b.exits), b.closings.used, len(b.ownerOf))
	}
	for now := uint64(40 * n * ms); now < 200_000*ms+40*n*ms; now += 1000 * ms {
		b.Tick(now)
	}
	b.Flush()
	if b.live != 0 || b.closings.used != 0 || b.rares.used != 0 || len(b.ownerOf) != 0 || len(b.exits) != 0 || len(b.attached) != 0 ||
		len(b.passive) != 0 || len(b.byTuple) != 0 || len(b.byID) != 0 {
		t.Fatalf("left: live %d closings %d owners %d exits %d attached %d passive %d byTuple %d byID %d",
			b.live, b.closings.used, len(b.ownerOf), len(b.exits), len(b.attached), len(b.passive), len(b.byTuple), len(b.byID))
	}
	if noClosing != (closing{}) || noRare != (rare{}) {
		t.Errorf("written to through a reader: %+v %+v", noClosing, noRare)
	}
	if len(b.closings.chunks) > 1 {
		t.Errorf("%d closing chunks left, want the spare at most", len(b.closings.chunks))
	}
	if len(a.finished) != 2*n {
		t.Errorf("%d records finished, want %d", len(a.finished), 2*n)
	}
	for _, r := range a.finished {
		if r.Kind != KindEvicted && r.End != 0 && r.Meta != &a.m {
			t.Fatalf("record %d finished without the Meta its Closed got: %+v", r.ID, r)
		}
	}
}
