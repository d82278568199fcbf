package settings

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// load reads the configuration file: one YAML document, a mapping of
// sections and keys. Unknown keys are errors, so a typo never silently
// keeps a default; a null value is a key not given. The values are only
// kept here, and checked with the flags'.
func (p *Parser) load(path string) error {
	data, err := readConfig(path)
	if err != nil {
		return errorf("--%s: %v", p.cmd.ConfigFlag, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty, or only comments
		}
		return errorf("config %s: %v", path, err)
	}
	// The decoder reads one document at a time: a second one would be
	// left unread, unknown keys and all.
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return errorf("config %s: %v", path, err)
	default:
		return errorf("config %s line %d: a second YAML document; the configuration is one document, remove the --- on this line", path, next.Line)
	}
	if len(doc.Content) == 0 {
		return nil
	}
	return p.walk(doc.Content[0], "")
}

// MaxConfigBytes bounds a configuration file: every key with a comment
// is a few KiB, and /dev/zero or a runaway generator must not be read
// until memory runs out.
const MaxConfigBytes = 1 << 20

func readConfig(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxConfigBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes, not a configuration file", path, MaxConfigBytes)
	}
	return data, nil
}

// walk takes one mapping's keys: settings, sections, or errors.
func (p *Parser) walk(n *yaml.Node, prefix string) error {
	n = deref(n)
	if isNull(n) {
		return nil // a section with nothing under it
	}
	if n.Kind != yaml.MappingNode {
		what := "the file"
		if prefix != "" {
			what = prefix
		}
		return errorf("config %s line %d: %s: want a mapping of keys, got %s", p.file, n.Line, what, describe(n))
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return errorf("config %s line %d: want a key, got %s", p.file, k.Line, describe(k))
		}
		key := k.Value
		if prefix != "" {
			key = prefix + "." + key
		}
		if first, ok := seen[key]; ok {
			return errorf("config %s line %d: %s: given twice (first on line %d)", p.file, k.Line, key, first)
		}
		seen[key] = k.Line
		if v := p.byKey[key]; v != nil {
			if err := p.fromFile(v, val); err != nil {
				return err
			}
			continue
		}
		if p.sections[key] {
			if err := p.walk(val, key); err != nil {
				return err
			}
			continue
		}
		return errorf("config %s line %d: %s: unknown key%s", p.file, k.Line, key, p.suggest(key))
	}
	return nil
}

// fromFile keeps a key's value: a scalar, or a sequence of scalars for a
// list.
func (p *Parser) fromFile(v *value, n *yaml.Node) error {
	n = deref(n)
	bad := func(format string, args ...any) error {
		return errorf("config %s line %d: invalid %s: "+format, append([]any{p.file, n.Line, v.name}, args...)...)
	}
	switch {
	case isNull(n):
		return nil
	case n.Kind == yaml.ScalarNode && !v.k.list:
		v.file = source{set: true, texts: []string{n.Value}, lines: []int{n.Line}}
	case n.Kind == yaml.SequenceNode && v.k.list:
		src := source{set: true, texts: []string{}}
		for _, item := range n.Content {
			item = deref(item)
			if item.Kind != yaml.ScalarNode || isNull(item) {
				return errorf("config %s line %d: invalid %s: want a list of values, got %s in it", p.file, item.Line, v.name, describe(item))
			}
			src.texts = append(src.texts, item.Value)
			src.lines = append(src.lines, item.Line)
		}
		v.file = src
	case v.k.list:
		return bad("want a list such as [a, b], got %s", describe(n))
	default:
		return bad("want a single value, got %s", describe(n))
	}
	return nil
}

// deref follows aliases (*name) to their anchored nodes.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 16; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping of keys"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "null"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "an alias"
}

// suggest names the known key closest to a mistyped one.
func (p *Parser) suggest(key string) string {
	var keys []string
	for k := range p.byKey {
		keys = append(keys, k)
	}
	for k := range p.sections {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	best, dist := "", 3
	for _, k := range keys {
		if d := editDistance(key, k); d < dist {
			best, dist = k, d
		}
	}
	if best == "" {
		return ""
	}
	return " (did you mean " + best + "?)"
}

// editDistance is the Levenshtein distance, for short keys.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// keyLeaf is the last part of a dotted key.
func keyLeaf(key string) string { return key[strings.LastIndexByte(key, '.')+1:] }
