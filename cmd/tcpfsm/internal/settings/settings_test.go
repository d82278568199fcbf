package settings

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// target is what the test settings fill.
type target struct {
	n      int64
	d      time.Duration
	f      float64
	b      bool
	s      string
	list   []string
	family string
}

func testCommand(t *target, withFile bool) Command {
	c := Command{Name: "test", Settings: []Setting{
		&Int{Spec: Spec{Key: "a.n", Flag: "n", Short: "n", Help: "a `N`"}, Default: 5, Min: 1, Max: 10,
			To: func(v int64) error { t.n = v; return nil }},
		&Duration{Spec: Spec{Key: "a.d", Flag: "d", Help: "a duration"}, Default: time.Second,
			Min: 100 * time.Millisecond, Max: time.Minute, Zero: "off",
			To: func(v time.Duration) error { t.d = v; return nil }},
		&Float{Spec: Spec{Key: "b.f", Flag: "f", Help: "a fraction"}, Default: 1, Max: 1, MinOpen: true,
			To: func(v float64) error { t.f = v; return nil }},
		&Bool{Spec: Spec{Key: "b.b", Flag: "b", Help: "a switch"},
			To: func(v bool) error { t.b = v; return nil }},
		&String{Spec: Spec{Key: "b.s", Flag: "s", Help: "a string"}, Default: "x",
			Check: func(v string) error {
				if v == "" {
					return want("text")
				}
				return nil
			},
			To: func(v string) error { t.s = v; return nil }},
		&Strings{Spec: Spec{Key: "b.list", Flag: "list", Short: "l", Help: "a list"},
			Check: func(v string) error {
				if v == "bad" {
					return want("not bad")
				}
				return nil
			},
			To: func(v []string) error { t.list = v; return nil }},
		&String{Spec: Spec{Key: "b.family", Flag: "family", Help: "a family",
			Also: []Alias{{Flag: "ipv4", Short: "4", Value: "ipv4"}, {Flag: "ipv6", Short: "6", Value: "ipv6"}}},
			To: func(v string) error { t.family = v; return nil }},
	}}
	if withFile {
		c.ConfigFlag, c.ConfigHelp = "config.file", "a `FILE`"
	}
	return c
}

func parse(args ...string) (target, error) {
	var t target
	_, err := New(testCommand(&t, true)).Parse(args)
	return t, err
}

func file(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultsAndFlags(t *testing.T) {
	got, err := parse()
	if err != nil {
		t.Fatal(err)
	}
	want := target{n: 5, d: time.Second, f: 1, s: "x", list: nil, family: ""}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults %+v, want %+v", got, want)
	}
	got, err = parse("-n", "7", "--d", "0", "--f=0.25", "--b", "--s", "y", "-l", "a,b", "-l", "c", "-4")
	if err != nil {
		t.Fatal(err)
	}
	want = target{n: 7, d: 0, f: 0.25, b: true, s: "y", list: []string{"a", "b", "c"}, family: "ipv4"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("flags %+v, want %+v", got, want)
	}
	if got, err := parse("--list="); err != nil || len(got.list) != 0 {
		t.Errorf("--list= gives %#v, want the empty list", got.list)
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-n", "0"}, "invalid a.n (--n) 0: want 1 to 10"},
		{[]string{"-n", "1099511627776"}, "invalid a.n (--n) 1099511627776: want 1 to 10"},
		{[]string{"-n", "x"}, `invalid a.n (--n) "x": want an integer, 1 to 10`},
		{[]string{"--d", "50ms"}, "invalid a.d (--d) 50ms: want 100ms to 1m, or 0 for off"},
		{[]string{"--d", "5"}, `invalid a.d (--d) "5": want a duration`},
		{[]string{"--f", "0"}, "invalid b.f (--f) 0: want above 0, at most 1"},
		{[]string{"--f", "NaN"}, "invalid b.f (--f) NaN"},
		{[]string{"--b=maybe"}, `invalid b.b (--b) "maybe": want true or false`},
		{[]string{"--s", ""}, `invalid b.s (--s) "": want text`},
		{[]string{"-l", "a,bad"}, `invalid b.list (--list) "bad": want not bad`},
		{[]string{"-4", "-6"}, "-4 and -6 exclude each other"},
		{[]string{"--family", "x", "--ipv6"}, "--family and -6 exclude each other"},
		{[]string{"--bogus"}, "unknown flag: --bogus"},
		{[]string{"--config.file", "/nonexistent"}, "--config.file: open /nonexistent"},
	} {
		_, err := parse(tc.args...)
		if err == nil || !IsError(err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	// Without a configuration file, settings are named by flag alone.
	var tg target
	_, err := New(testCommand(&tg, false)).Parse([]string{"-n", "0"})
	if err == nil || err.Error() != "invalid --n 0: want 1 to 10" {
		t.Errorf("no file: %v", err)
	}
}

func TestFile(t *testing.T) {
	got, err := parse("--config.file", file(t, "a:\n  n: 8\n  d: 0\nb:\n  list: [1, two]\n  s: ~\n  f: &h 0.5\n  b: yes\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := target{n: 8, d: 0, f: 0.5, b: true, s: "x", list: []string{"1", "two"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("file %+v, want %+v", got, want)
	}
	// Flags override the file, and a list flag replaces the file's list.
	got, err = parse("--config.file", file(t, "a: {n: 8}\nb: {list: [a]}\n"), "-n", "9", "-l", "z")
	if err != nil || got.n != 9 || !reflect.DeepEqual(got.list, []string{"z"}) {
		t.Errorf("override: %+v, %v", got, err)
	}
	for _, tc := range []struct{ content, want string }{
		{"a:\n  n: 0\n", "line 2: invalid a.n (--n) 0: want 1 to 10"},
		{"a:\n  n: 0\n", "line 2"},
		{"a:\n  nn: 1\n", "line 2: a.nn: unknown key (did you mean a.n?)"},
		{"c: 1\n", "line 1: c: unknown key"},
		{"a: 1\n", "line 1: a: want a mapping of keys, got \"1\""},
		{"a:\n  n: [1]\n", "line 2: invalid a.n (--n): want a single value, got a list"},
		{"b:\n  list: a\n", "line 2: invalid b.list (--list): want a list such as [a, b]"},
		{"b:\n  list:\n    - ok\n    - bad\n", `line 4: invalid b.list (--list) "bad"`},
		{"b:\n  list: [[a]]\n", "want a list of values, got a list in it"},
		{"a:\n  n: 1\n  n: 2\n", "line 3: a.n: given twice (first on line 2)"},
		{"a:\n  n: 1\n---\na:\n  x: 1\n", "line 3: a second YAML document"},
		{"a: [\n", "config "},
		{"[1]\n", "line 1: the file: want a mapping of keys, got a list"},
	} {
		_, err := parse("--config.file", file(t, tc.content))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.content, err, tc.want)
		}
	}
	// A bad value in the file is an error even where a flag overrides it:
	// the file is checked whole.
	if _, err := parse("--config.file", file(t, "a:\n  n: 0\n"), "-n", "3"); err == nil {
		t.Error("a bad file value hidden by a flag was accepted")
	}
	for _, empty := range []string{"", "# nothing\n", "---\n", "a:\n", "a: {}\n"} {
		if got, err := parse("--config.file", file(t, empty)); err != nil || got.n != 5 {
			t.Errorf("%q: %+v, %v", empty, got, err)
		}
	}
}

// The example file lists every key at its default, and reads back as the
// defaults.
func TestWriteYAML(t *testing.T) {
	var tg target
	var b strings.Builder
	if err := WriteYAML(&b, "Test.", []Section{{Key: "b", Doc: "Section b."}}, testCommand(&tg, true).Settings); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	for _, want := range []string{"# Test.\n", "\na:\n", "  n: 5\n", "  d: 1s\n", "  list: []\n", `  s: "x"` + "\n",
		"Range: 1 to 10. (--n, -n)", "Range: 100ms to 1m, or 0 for off.", "(--family, -4, -6)", "  # Section b.\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("example lacks %q:\n%s", want, text)
		}
	}
	got, err := parse("--config.file", file(t, text))
	if def, _ := parse(); err != nil || !reflect.DeepEqual(got, def) {
		t.Errorf("example reads as %+v (%v), want the defaults %+v", got, err, def)
	}
	for _, line := range strings.Split(text, "\n") {
		if len(line) > 78 {
			t.Errorf("line over 78 columns: %q", line)
		}
	}
}

func TestHelpShowsRangeAndDefault(t *testing.T) {
	var tg target
	usage := New(testCommand(&tg, true)).FlagSet().FlagUsages()
	for _, want := range []string{"-n, --n N", "a N (1 to 10; default 5)", "(100ms to 1m, or 0 for off; default 1s)",
		`a string (default "x")`, "-4, --ipv4", "--config.file FILE"} {
		if !strings.Contains(usage, want) {
			t.Errorf("--help lacks %q:\n%s", want, usage)
		}
	}
}
