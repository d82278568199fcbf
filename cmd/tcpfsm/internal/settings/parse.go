package settings

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// Command is a command's settings, and whether a file can give them.
type Command struct {
	Name     string
	Settings []Setting
	// ConfigFlag, when set, names the flag of a YAML file that gives the
	// settings with Keys; flags override it. Messages then name a setting
	// by key and flag: "tracer.max_tracked (--max-tracked)".
	ConfigFlag, ConfigHelp string
}

// Parser reads one command line, and the file it names, into the
// settings' To functions.
type Parser struct {
	cmd      Command
	fs       *pflag.FlagSet
	vals     []*value
	byKey    map[string]*value
	sections map[string]bool
	file     string // the configuration file, when given
}

// value is one setting during one parse: what each source gave.
type value struct {
	spec     *Spec
	k        kind
	name     string
	file     source
	flag     source
	flagBy   string // the flag that gave the flag value: "--family", "-4"
	conflict string
}

// source is what the file or the flags gave: texts, one per list item,
// and the lines they are on in the file.
type source struct {
	set   bool
	texts []string
	lines []int
}

// New makes the flags of a command's settings.
func New(c Command) *Parser {
	fs := pflag.NewFlagSet(c.Name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SortFlags = false
	p := &Parser{cmd: c, fs: fs, byKey: map[string]*value{}, sections: map[string]bool{}}
	if c.ConfigFlag != "" {
		fs.StringVar(&p.file, c.ConfigFlag, "", c.ConfigHelp)
	}
	for _, s := range c.Settings {
		sp := s.spec()
		v := &value{spec: sp, k: s.kind(), name: Name(s, c.ConfigFlag != "")}
		p.vals = append(p.vals, v)
		if sp.Key != "" {
			if p.byKey[sp.Key] != nil {
				panic("settings: key " + sp.Key + " described twice")
			}
			p.byKey[sp.Key] = v
			for i := strings.IndexByte(sp.Key, '.'); i >= 0; i = nextDot(sp.Key, i) {
				p.sections[sp.Key[:i]] = true
			}
		}
		f := fs.VarPF(flagValue{v, "--" + sp.Flag}, sp.Flag, sp.Short, usage(v))
		if v.k.typ == "bool" {
			f.NoOptDefVal = "true"
		}
		for i := range sp.Also {
			a := &sp.Also[i]
			by := "--" + a.Flag
			if a.Short != "" {
				by = "-" + a.Short
			}
			fs.VarPF(aliasValue{v, a, by}, a.Flag, a.Short, a.Help).NoOptDefVal = "true"
		}
	}
	return p
}

func nextDot(s string, i int) int {
	j := strings.IndexByte(s[i+1:], '.')
	if j < 0 {
		return -1
	}
	return i + 1 + j
}

// Name is how messages name a setting: "--pid", or with a configuration
// file "filter.pid (--pid)".
func Name(s Setting, keyed bool) string {
	sp := s.spec()
	if keyed && sp.Key != "" {
		return sp.Key + " (--" + sp.Flag + ")"
	}
	return "--" + sp.Flag
}

// SpecOf is a setting's description, for tests and documentation.
func SpecOf(s Setting) *Spec { return s.spec() }

// FlagSet is the parser's flags: --help, and arguments after the flags.
func (p *Parser) FlagSet() *pflag.FlagSet { return p.fs }

// Parse reads args (and the file they name), checks every value given and
// hands each setting's value, given or default, to its To. help is true
// when --help was asked for; then nothing is checked. Every error is an
// *Error: one line naming the flag, the key and the line.
func (p *Parser) Parse(args []string) (help bool, err error) {
	if err := p.fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return true, nil
		}
		return false, errorf("%v", err)
	}
	if p.file != "" {
		if err := p.load(p.file); err != nil {
			return false, err
		}
	}
	for _, v := range p.vals {
		if err := p.resolve(v); err != nil {
			return false, err
		}
	}
	return false, nil
}

// resolve checks what the file and the flags gave, the flags winning, and
// hands the value on.
func (p *Parser) resolve(v *value) error {
	if v.conflict != "" {
		return errorf("%s", v.conflict)
	}
	final, from := v.k.def, ""
	for _, src := range []*source{&v.file, &v.flag} {
		if !src.set {
			continue
		}
		x, err := p.read(v, src)
		if err != nil {
			return err
		}
		final, from = x, p.where(src, 0)
	}
	if err := v.k.to(final); err != nil {
		return errorf("%sinvalid %s: %v", from, v.name, err)
	}
	return nil
}

// read parses and checks one source's texts.
func (p *Parser) read(v *value, src *source) (any, error) {
	var items []string
	for i, text := range src.texts {
		x, err := v.k.read(text)
		if err != nil {
			shown := text
			if v.k.quote || x == nil {
				shown = strconv.Quote(text)
			}
			return nil, errorf("%sinvalid %s %s: %v", p.where(src, i), v.name, shown, err)
		}
		if !v.k.list {
			return x, nil
		}
		items = append(items, x.(string))
	}
	return items, nil // nil when empty, as an empty default
}

// where is a message's prefix for the file's texts: "config FILE line N: ".
func (p *Parser) where(src *source, item int) string {
	if item < len(src.lines) {
		return fmt.Sprintf("config %s line %d: ", p.file, src.lines[item])
	}
	return ""
}

// flagValue takes a setting's flag. It keeps the text: checking waits
// until the file is read, so both are checked alike and in order.
type flagValue struct {
	v  *value
	by string
}

func (f flagValue) Set(s string) error {
	f.v.fromFlag(f.by, s)
	return nil
}
func (f flagValue) String() string { return "" }
func (f flagValue) Type() string   { return f.v.k.typ }

// aliasValue takes an Alias flag.
type aliasValue struct {
	v  *value
	a  *Alias
	by string
}

func (f aliasValue) Set(s string) error {
	on, err := parseBool(s)
	if err != nil {
		f.v.conflict = fmt.Sprintf("invalid %s %q: %v", f.by, s, err)
	} else if on {
		f.v.fromFlag(f.by, f.a.Value)
	}
	return nil
}
func (f aliasValue) String() string { return "" }
func (f aliasValue) Type() string   { return "bool" }

func (v *value) fromFlag(by, text string) {
	if !v.k.list {
		if v.flag.set && by != v.flagBy && text != v.flag.texts[0] && v.conflict == "" {
			v.conflict = v.flagBy + " and " + by + " exclude each other"
		}
		v.flag = source{set: true, texts: []string{text}}
		v.flagBy = by
		return
	}
	if !v.flag.set {
		v.flag = source{set: true, texts: []string{}}
	}
	// A repeated list flag adds to the list; a flag given with no text
	// ("--metrics.labels=") is the empty list.
	if text != "" {
		v.flag.texts = append(v.flag.texts, strings.Split(text, ",")...)
	}
	v.flagBy = by
}

// usage is a flag's help line: the description's, its range and default.
func usage(v *value) string {
	var extra []string
	if v.k.bounds != "" {
		extra = append(extra, v.k.bounds)
	}
	if v.k.unset == "" && !isZero(v.k.def) {
		extra = append(extra, "default "+v.k.literal(v.k.def))
	}
	if len(extra) == 0 {
		return v.spec.Help
	}
	return v.spec.Help + " (" + strings.Join(extra, "; ") + ")"
}

func isZero(v any) bool {
	switch x := v.(type) {
	case []string:
		return len(x) == 0
	case string:
		return x == ""
	case bool:
		return !x
	case int64:
		return x == 0
	case float64:
		return x == 0
	}
	return fmt.Sprint(v) == "0s"
}
