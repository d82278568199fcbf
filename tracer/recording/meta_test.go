package recording

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tcpfsm/tcpfsm/tracer/metadata"
	"github.com/tcpfsm/tcpfsm/tracer/probe"
)

func webMeta() metadata.Meta {
	return metadata.Meta{
		Runtime: "containerd", ID: strings.Repeat("ab", 32), Name: "nginx", Image: "localhost/nginx:1.27",
		Pod: metadata.Pod{
			Namespace: "shop", Name: "web-7d4b9c8f6-x2x4q", UID: "u-123", Labels: map[string]string{"app": "web", "tier": "front"},
			Workload: metadata.Workload{Kind: "Deployment", Name: "web", Source: "pod-template-hash"},
		},
	}
}

func TestMetaRoundTrip(t *testing.T) {
	sandbox := metadata.Meta{Runtime: "cri-o", ID: "s1", Sandbox: true,
		Pod: metadata.Pod{Namespace: "data", Name: "db-0", IP: netip.MustParseAddr("10.1.2.3")}}
	v6 := sandbox
	v6.Pod.IP = netip.MustParseAddr("fd00::7")
	for _, in := range []Meta{
		{Op: MetaEnabled},
		{Op: MetaEnabled, Wait: time.Second, Peers: true},
		{Op: MetaContainer, Known: true, Meta: webMeta()},
		{Op: MetaContainer, Meta: metadata.Meta{Runtime: "podman", ID: "cd"}},
		{Op: MetaPodIP, Meta: sandbox},
		{Op: MetaPodIP, Meta: v6},
		{Op: MetaPodIPGone, Meta: metadata.Meta{Pod: metadata.Pod{IP: netip.MustParseAddr("10.1.2.3")}}},
	} {
		b, err := appendMeta(nil, &in)
		if err != nil {
			t.Fatal(err)
		}
		var out Input
		if err := decode(KindMeta, b, &out); err != nil {
			t.Fatalf("%s: %v", in.Op, err)
		}
		if !reflect.DeepEqual(out.Meta, in) {
			t.Errorf("round trip of %s:\n got %+v\nwant %+v", in.Op, out.Meta, in)
		}
		// Encoding is deterministic: labels sorted, whatever the map order.
		again, _ := appendMeta(nil, &out.Meta)
		if !bytes.Equal(again, b) {
			t.Errorf("%s: re-encoding differs", in.Op)
		}
	}
}

// Labels that do not fit a record are left out, the rest kept.
func TestMetaLabelsBeyondPayload(t *testing.T) {
	in := Meta{Op: MetaContainer, Known: true, Meta: webMeta()}
	in.Meta.Pod.Labels = map[string]string{}
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		in.Meta.Pod.Labels[k] = strings.Repeat(k, 1000)
	}
	b, err := appendMeta(nil, &in)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MaxPayload {
		t.Fatalf("%d bytes, more than %d", len(b), MaxPayload)
	}
	var out Input
	if err := decode(KindMeta, b, &out); err != nil {
		t.Fatal(err)
	}
	got := out.Meta.Meta.Pod.Labels
	if len(got) != 3 || got["a"] == "" || got["c"] == "" || got["d"] != "" {
		t.Errorf("labels kept: %d (%v), want a, b, c", len(got), func() []string {
			var ks []string
			for k := range got {
				ks = append(ks, k)
			}
			return ks
		}())
	}
}

func TestMetaBadPayloads(t *testing.T) {
	good, _ := appendMeta(nil, &Meta{Op: MetaContainer, Known: true, Meta: webMeta()})
	set := func(i int, v byte) []byte { b := bytes.Clone(good); b[i] = v; return b }
	noID, _ := appendMeta(nil, &Meta{Op: MetaContainer, Meta: metadata.Meta{Runtime: "docker"}})
	noIP, _ := appendMeta(nil, &Meta{Op: MetaPodIPGone})
	for name, p := range map[string][]byte{
		"short":           good[:3],
		"op 0":            set(0, 0),
		"op 9":            set(0, 9),
		"flag bits":       set(1, 0x80),
		"reserved":        set(2, 1),
		"cut in a string": good[:12],
		"cut at labels":   good[:len(good)-3],
		"trailing":        append(bytes.Clone(good), 0),
		"no id":           noID,
		"ip gone, no ip":  noIP,
	} {
		var out Input
		if err := decode(KindMeta, p, &out); !errors.Is(err, ErrBadInput) {
			t.Errorf("%s: %v, want ErrBadInput", name, err)
		}
	}
	// An IP of 5 bytes.
	b, _ := appendMeta(nil, &Meta{Op: MetaPodIP, Meta: metadata.Meta{Pod: metadata.Pod{IP: netip.MustParseAddr("10.0.0.1")}}})
	bad := bytes.Clone(b)
	bad[len(bad)-2-5] = 5 // the IP's length byte: 4 address bytes and the u16 label count follow
	var out Input
	if err := decode(KindMeta, bad, &out); !errors.Is(err, ErrBadInput) {
		t.Errorf("IP of 5 bytes: %v", err)
	}
}

// A version 2 recording carries meta inputs; a version 1 recording
// cannot, and one that did is damaged.
func TestMetaNeedsVersion2(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Header{EventSize: uint16(probe.EventSize)})
	if err != nil {
		t.Fatal(err)
	}
	in := Input{Kind: KindMeta, Meta: Meta{Op: MetaContainer, Known: true, Meta: webMeta()}}
	if err := w.WriteInput(&in); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	data := buf.Bytes()
	rd, err := NewReader(bytes.NewReader(data), probe.EventSize)
	if err != nil {
		t.Fatal(err)
	}
	var out Input
	if err := rd.Read(&out); err != nil || out.Kind != KindMeta || !reflect.DeepEqual(out.Meta, in.Meta) {
		t.Fatalf("read back: %v %+v", err, out.Meta)
	}
	if err := rd.Read(&out); !errors.Is(err, io.EOF) {
		t.Fatalf("after the one input: %v", err)
	}

	// The same bytes under a version 1 header (checksum fixed).
	v1 := bytes.Clone(data)
	binary.LittleEndian.PutUint16(v1[8:], 1)
	hdrLen := int(binary.LittleEndian.Uint16(v1[10:]))
	binary.LittleEndian.PutUint32(v1[hdrLen-4:], crc32.Checksum(v1[:hdrLen-4], castagnoli))
	rd, err = NewReader(bytes.NewReader(v1), probe.EventSize)
	if err != nil {
		t.Fatalf("version 1 header: %v", err)
	}
	var fe *FormatError
	if err := rd.Read(&out); !errors.As(err, &fe) || !strings.Contains(err.Error(), "unknown record kind 8") {
		t.Errorf("meta input in a version 1 recording: %v", err)
	}
}
