package cgroups

import (
	"regexp"
	"strings"
	"testing"
)

// Container ids as the runtimes make them: 64 lowercase hex digits.
const (
	dockerID = "1a196f1b57fc3a32ad4f48c42a0f0bf5d81190fdefc553ffde599a0c9dd296d7"
	innerID  = "841edd0400bf92c9a76d7fedbe2ac24789f7ac6dc13fb9bedfd3a91e69e96b90"
	ctrdID   = "8443dde905ccb7e0593d8b7152e85dc93d980307a92371d781e0db4478b2b61f"
	crioID   = "9a76b4ceee1a0e5c87702c0c271f87ca8bafe20c693a3d706b3ce223b9d5660f"
	podmanID = "7fc87d7337a4856c3dcbf18493fead053ba8d21e2dcaa53731036a49f83c611a"

	// Kubernetes pod uids: dashes in cgroupfs names, underscores in
	// systemd slice names (where a dash means nesting).
	podUID      = "acb6014c-6f68-4613-b72e-e95d15c82e0a"
	podUIDSlice = "acb6014c_6f68_4613_b72e_e95d15c82e0a"

	burstableSlice = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + podUIDSlice + ".slice"
	besteffortPod  = "/kubepods/besteffort/pod" + podUID
)

var parseTests = []struct {
	name    string
	path    string
	runtime string // "" when no container
	id      string
}{
	// docker
	{"docker cgroupfs", "/docker/" + dockerID, "docker", dockerID},
	{"docker systemd", "/system.slice/docker-" + dockerID + ".scope", "docker", dockerID},
	{"docker systemd, systemd inside", "/system.slice/docker-" + dockerID + ".scope/init.scope", "docker", dockerID},
	{"docker sub-cgroup", "/system.slice/docker-" + dockerID + ".scope/init", "docker", dockerID},
	{"docker sub-cgroup, deeper", "/system.slice/docker-" + dockerID + ".scope/system.slice/nginx.service", "docker", dockerID},
	{"docker rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/docker-" + dockerID + ".scope", "docker", dockerID},
	{"docker under kubelet, systemd", burstableSlice + "/docker-" + dockerID + ".scope", "docker", dockerID},
	{"docker in docker, innermost wins", "/docker/" + dockerID + "/docker/" + innerID, "docker", innerID},
	{"docker in docker, systemd outside", "/system.slice/docker-" + dockerID + ".scope/docker/" + innerID, "docker", innerID},
	{"trailing slash", "/docker/" + dockerID + "/", "docker", dockerID},
	{"no leading slash", "system.slice/docker-" + dockerID + ".scope", "docker", dockerID},

	// containerd
	{"cri-containerd systemd", burstableSlice + "/cri-containerd-" + ctrdID + ".scope", "containerd", ctrdID},
	{"cri-containerd systemd, besteffort", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + podUIDSlice + ".slice/cri-containerd-" + ctrdID + ".scope", "containerd", ctrdID},
	{"cri-containerd systemd, guaranteed", "/kubepods.slice/kubepods-pod" + podUIDSlice + ".slice/cri-containerd-" + ctrdID + ".scope", "containerd", ctrdID},
	{"kind, systemd", "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + podUIDSlice + ".slice/cri-containerd-" + ctrdID + ".scope", "containerd", ctrdID},
	{"kubepods cgroupfs, besteffort", besteffortPod + "/" + ctrdID, "containerd", ctrdID},
	{"kubepods cgroupfs, burstable", "/kubepods/burstable/pod" + podUID + "/" + ctrdID, "containerd", ctrdID},
	{"kubepods cgroupfs, guaranteed", "/kubepods/pod" + podUID + "/" + ctrdID, "containerd", ctrdID},
	{"kubepods cgroupfs, cgroup-root", "/kubelet/kubepods/burstable/pod" + podUID + "/" + ctrdID, "containerd", ctrdID},
	{"k3s in docker", "/docker/" + dockerID + "/kubepods/besteffort/pod" + podUID + "/" + ctrdID, "containerd", ctrdID},
	{"systemd path to cgroupfs runc", "/system.slice/containerd.service/kubepods-burstable-pod" + podUIDSlice + ".slice:cri-containerd:" + ctrdID, "containerd", ctrdID},
	{"nerdctl systemd", "/system.slice/nerdctl-" + ctrdID + ".scope", "containerd", ctrdID},

	// cri-o
	{"cri-o systemd", burstableSlice + "/crio-" + crioID + ".scope", "cri-o", crioID},
	{"cri-o systemd, sub-cgroup", burstableSlice + "/crio-" + crioID + ".scope/container", "cri-o", crioID},
	{"cri-o cgroupfs", "/kubepods/burstable/pod" + podUID + "/crio-" + crioID, "cri-o", crioID},

	// podman
	{"podman rootful", "/machine.slice/libpod-" + podmanID + ".scope", "podman", podmanID},
	{"podman payload cgroup", "/machine.slice/libpod-" + podmanID + ".scope/container", "podman", podmanID},
	{"podman pod", "/machine.slice/machine-libpod_pod_" + innerID + ".slice/libpod-" + podmanID + ".scope", "podman", podmanID},
	{"podman rootless", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + podmanID + ".scope", "podman", podmanID},
	{"podman cgroupfs", "/libpod_parent/libpod-" + podmanID, "podman", podmanID},

	// lxc
	{"lxc", "/lxc.payload.web1", "lxc", "web1"},
	{"lxc inner cgroup", "/lxc.payload.web1/.lxc", "lxc", "web1"},
	{"lxc systemd inside", "/lxc.payload.web1/system.slice/nginx.service", "lxc", "web1"},
	{"lxd project", "/lxc.payload.staging_db-2", "lxc", "staging_db-2"},

	// systemd-nspawn
	{"nspawn service", "/machine.slice/systemd-nspawn@debian.service", "systemd-nspawn", "debian"},
	{"nspawn service payload", "/machine.slice/systemd-nspawn@debian.service/payload", "systemd-nspawn", "debian"},
	{"nspawn service payload, deeper", "/machine.slice/systemd-nspawn@debian.service/payload/system.slice/sshd.service", "systemd-nspawn", "debian"},
	{"nspawn scope payload, escaped", `/machine.slice/machine-fedora\x2d40.scope/payload`, "systemd-nspawn", "fedora-40"},
	{"nspawn service, escaped", `/machine.slice/systemd-nspawn@web\x2d1.service/payload`, "systemd-nspawn", "web-1"},

	// not containers
	{"empty", "", "", ""},
	{"root", "/", "", ""},
	{"init.scope", "/init.scope", "", ""},
	{"user.slice", "/user.slice", "", ""},
	{"session", "/user.slice/user-1000.slice/session-1.scope", "", ""},
	{"service", "/system.slice/nginx.service", "", ""},
	{"docker daemon", "/system.slice/docker.service", "", ""},
	{"containerd daemon", "/system.slice/containerd.service", "", ""},
	{"63 hex digits", "/docker/" + dockerID[:63], "", ""},
	{"63 hex digits, scope", "/system.slice/docker-" + dockerID[:63] + ".scope", "", ""},
	{"65 hex digits", "/docker/" + dockerID + "0", "", ""},
	{"uppercase hex", "/docker/" + strings.ToUpper(dockerID), "", ""},
	{"uppercase hex, scope", "/system.slice/docker-" + strings.ToUpper(dockerID) + ".scope", "", ""},
	{"one uppercase digit", "/docker/" + dockerID[:63] + "F", "", ""},
	{"docker scope without .scope", "/system.slice/docker-" + dockerID, "", ""},
	{"docker mount unit", "/system.slice/var-lib-docker-overlay2-" + dockerID + "-merged.mount", "", ""},
	{"kubepods pod", besteffortPod, "", ""},
	{"kubepods slice", burstableSlice, "", ""},
	{"bare id under kubepods, no pod", "/kubepods/burstable/" + ctrdID, "", ""},
	{"bare id at top", "/" + ctrdID, "", ""},
	{"docker --cgroup-parent", "/custom/" + dockerID, "", ""},
	{"plain containerd", "/default/" + ctrdID, "", ""},
	{"plain containerd, k8s.io namespace", "/k8s.io/" + ctrdID, "", ""},
	{"plain containerd, named", "/default/redis1", "", ""},
	{"cri-o conmon systemd", burstableSlice + "/crio-conmon-" + crioID + ".scope", "", ""},
	{"cri-o conmon cgroupfs", "/kubepods/burstable/pod" + podUID + "/crio-conmon-" + crioID, "", ""},
	{"podman conmon", "/machine.slice/libpod-conmon-" + podmanID + ".scope", "", ""},
	{"podman conmon cgroupfs", "/libpod_parent/conmon", "", ""},
	{"conmon inside docker is docker's", "/docker/" + dockerID + "/libpod-conmon-" + podmanID + ".scope", "docker", dockerID},
	{"lxc monitor", "/lxc.monitor.web1", "", ""},
	{"lxc empty name", "/lxc.payload.", "", ""},
	{"lxc odd name", "/lxc.payload.a b", "", ""},
	{"nspawn supervisor", "/machine.slice/systemd-nspawn@debian.service/supervisor", "", ""},
	{"nspawn supervisor in docker", "/docker/" + dockerID + "/machine.slice/systemd-nspawn@debian.service/supervisor", "docker", dockerID},
	{"machine scope without payload", "/machine.slice/machine-fedora.scope", "", ""},
	{"libvirt vm", `/machine.slice/machine-qemu\x2d1\x2dwin11.scope`, "", ""},
	{"libvirt vm emulator", `/machine.slice/machine-qemu\x2d1\x2dwin11.scope/libvirt/emulator`, "", ""},
	{"nspawn bad escape", `/machine.slice/systemd-nspawn@web\x2.service`, "", ""},
	{"nspawn escaped slash", `/machine.slice/systemd-nspawn@a\x2fb.service`, "", ""},
	{"nspawn empty name", "/machine.slice/systemd-nspawn@.service", "", ""},
}

func TestParseContainer(t *testing.T) {
	for _, id := range []string{dockerID, innerID, ctrdID, crioID, podmanID} {
		if !isHexID(id) {
			t.Fatalf("test id %s is not 64 lowercase hex digits", id)
		}
	}
	for _, tt := range parseTests {
		t.Run(tt.name, func(t *testing.T) {
			c, ok := ParseContainer(tt.path)
			want := Container{Runtime: tt.runtime, ID: tt.id}
			if c != want || ok != (tt.runtime != "") {
				t.Errorf("ParseContainer(%q) = %+v, %v; want %+v, %v", tt.path, c, ok, want, tt.runtime != "")
			}
		})
	}
}

var (
	hexID   = regexp.MustCompile(`^[0-9a-f]{64}$`)
	nameID  = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)
	idShape = map[string]*regexp.Regexp{
		"docker":         hexID,
		"containerd":     hexID,
		"cri-o":          hexID,
		"podman":         hexID,
		"lxc":            nameID,
		"systemd-nspawn": nameID,
	}
)

func FuzzParseContainer(f *testing.F) {
	for _, tt := range parseTests {
		f.Add(tt.path)
	}
	f.Fuzz(func(t *testing.T, path string) {
		c, ok := ParseContainer(path)
		if !ok {
			if c != (Container{}) {
				t.Fatalf("ParseContainer(%q) = %+v but not ok", path, c)
			}
			return
		}
		shape, known := idShape[c.Runtime]
		if !known {
			t.Fatalf("ParseContainer(%q): unknown runtime %q", path, c.Runtime)
		}
		if !shape.MatchString(c.ID) {
			t.Fatalf("ParseContainer(%q): %s id %q has the wrong shape", path, c.Runtime, c.ID)
		}
		// Hex ids are taken verbatim from one path component.
		if shape == hexID && !strings.Contains(path, c.ID) {
			t.Fatalf("ParseContainer(%q): id %q is not in the path", path, c.ID)
		}
	})
}
