package settings

import (
	"fmt"
	"io"
	"strings"
)

// Section documents a section of the YAML file: the comment under its
// name.
type Section struct {
	Key, Doc string
}

// WriteYAML writes the example configuration file: every setting with a
// key, under its section, set to its default, its documentation, range
// and flags in a comment above it. header is the file's opening comment.
func WriteYAML(w io.Writer, header string, sections []Section, set []Setting) error {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(header, "\n"), "\n") {
		b.WriteString(strings.TrimRight("# "+line, " ") + "\n")
	}
	docs := map[string]string{}
	for _, s := range sections {
		docs[s.Key] = s.Doc
	}
	// Sections in the order their first setting comes.
	var order []string
	bySection := map[string][]Setting{}
	for _, s := range set {
		key := s.spec().Key
		if key == "" {
			continue
		}
		sec, _, ok := strings.Cut(key, ".")
		if !ok || strings.Contains(key[len(sec)+1:], ".") {
			return fmt.Errorf("settings: key %s: want section.key", key)
		}
		if bySection[sec] == nil {
			order = append(order, sec)
		}
		bySection[sec] = append(bySection[sec], s)
	}
	for _, sec := range order {
		b.WriteString("\n" + sec + ":\n")
		if d := docs[sec]; d != "" {
			writeComment(&b, "  ", d)
			b.WriteString("\n")
		}
		for _, s := range bySection[sec] {
			sp, k := s.spec(), s.kind()
			writeComment(&b, "  ", comment(sp, k))
			lit := "null"
			if k.unset == "" {
				lit = k.literal(k.def)
			}
			fmt.Fprintf(&b, "  %s: %s\n", keyLeaf(sp.Key), lit)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// comment is a key's comment: its documentation, its range, what no
// value means, and its flags.
func comment(sp *Spec, k kind) string {
	doc := sp.Doc
	if doc == "" {
		doc = strings.ReplaceAll(sp.Help, "`", "")
	}
	doc = strings.TrimSpace(doc)
	if k.bounds != "" {
		doc += " Range: " + k.bounds + "."
	}
	if k.unset != "" {
		doc += " Null or left out: " + k.unset + "."
	}
	flags := []string{"--" + sp.Flag}
	if sp.Short != "" {
		flags = append(flags, "-"+sp.Short)
	}
	for _, a := range sp.Also {
		if a.Short != "" {
			flags = append(flags, "-"+a.Short)
		} else {
			flags = append(flags, "--"+a.Flag)
		}
	}
	return doc + " (" + strings.Join(flags, ", ") + ")"
}

// writeComment wraps text into comment lines of at most 78 columns.
func writeComment(b *strings.Builder, indent, text string) {
	const width = 78
	line := indent + "#"
	for _, word := range words(text) {
		if len(line)+1+len(word) > width && line != indent+"#" {
			b.WriteString(line + "\n")
			line = indent + "#"
		}
		line += " " + word
	}
	b.WriteString(line + "\n")
}

// words splits text at spaces, but not inside brackets: "[80, 443]" stays
// one word.
func words(text string) []string {
	var out []string
	depth := 0
	for _, w := range strings.Fields(text) {
		if depth > 0 {
			out[len(out)-1] += " " + w
		} else {
			out = append(out, w)
		}
		depth += strings.Count(w, "[") - strings.Count(w, "]")
		depth = max(depth, 0)
	}
	return out
}
