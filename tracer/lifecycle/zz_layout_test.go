package lifecycle

import (
	"reflect"
	"testing"
)

func TestZZLayout(t *testing.T) {
	for _, ty := range []reflect.Type{reflect.TypeFor[core](), reflect.TypeFor[slot](), reflect.TypeFor[Record]()} {
		var end uintptr
		for k := range ty.NumField() {
			f := ty.Field(k)
			if f.Offset != end {
				t.Logf("  pad %d before %s", f.Offset-end, f.Name)
			}
			end = f.Offset + f.Type.Size()
		}
		t.Logf("%s size %d (end %d)", ty.Name(), ty.Size(), end)
	}
}
