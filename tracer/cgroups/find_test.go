package cgroups

import (
	"reflect"
	"strings"
	"testing"
)

func TestFindContainers(t *testing.T) {
	a, b, c := strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64)
	root, _ := fakeTree(t,
		"/kubepods/besteffort/podu-1/"+a,
		"/kubepods/besteffort/podu-1/"+b+"/child", // a payload's own child: not another container
		"/kubepods/burstable/podu-2/"+c,
		"/system.slice/docker-"+a+".scope",
	)
	got := FindContainers(root, func(k Container) bool { return k.Runtime == RuntimeContainerd && k.ID != c })
	want := []string{"/kubepods/besteffort/podu-1/" + a, "/kubepods/besteffort/podu-1/" + b}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("FindContainers = %v, want %v", got, want)
	}
	if got := FindContainers(root, func(Container) bool { return false }); got != nil {
		t.Errorf("none wanted: %v", got)
	}
}
