package lifecycle

import (
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
		case "TimeWaitEnter", "TimeWaitExit", "heldUntil", "twSeen", "twExpected", "orphanAt", "finAt",
			"Pid", "Comm", "CgroupID", "Spans", "Cgroup", "Container", "Emitted", "Meta", "Peer":
		default:
			t.Errorf("Record.%s: not in core, not filled by Builder.fill", n)
		}
	}
	t.Logf("Record %d B, slot %d B", unsafe.Sizeof(Record{}), unsafe.Sizeof(slot{}))
}
