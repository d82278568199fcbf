// Package settings describes each of a command's settings once: its YAML
// key, its flag, its default, its check, its help and where its value
// goes. From those descriptions it makes the flags, reads the YAML file
// (unknown keys are errors), checks every value given and names the key,
// the flag and the line of a bad one, and writes --help and the
// documented example file.
//
// A description is a value of one of the kinds below (Int, Duration,
// Float, Bool, String, Strings), built by a function that binds its To to
// the struct the command runs with, so every parse fills a fresh one.
package settings

import (
	"cmp"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Spec is what every kind of setting has.
type Spec struct {
	// Key is the YAML key, dotted by section: "tracer.max_tracked". Empty
	// for a setting that is only a flag.
	Key string
	// Flag is the long flag, without its dashes; Short its one-letter
	// shorthand, or empty.
	Flag, Short string
	// Help is the flag's line in --help. A word in backquotes names the
	// flag's value: "only connections owned by process `PID`".
	Help string
	// Doc is the comment above the key in the example file; empty: Help.
	Doc string
	// Also are flags that each stand for one value of the setting, such
	// as -4 for --family ipv4.
	Also []Alias
}

// Alias is a flag without a value that gives its setting one value.
type Alias struct {
	Flag, Short string
	Value       string // the setting's value, as its flag would take it
	Help        string
}

// Setting is one description; its kind is one of the types below.
type Setting interface {
	spec() *Spec
	kind() kind
}

// kind is what differs between the kinds: how a value is read, checked,
// shown and handed on.
type kind struct {
	typ     string // pflag's name of the value type, for --help
	list    bool   // a list: a flag repeats or takes commas, a YAML sequence
	def     any
	unset   string                         // the default is no value, and means this
	bounds  string                         // "64 to 4194304", for help and docs
	quote   bool                           // messages quote the value: it is text
	read    func(text string) (any, error) // parse and check one value (one item of a list)
	to      func(v any) error              // hands the final value on
	literal func(v any) string             // a value as YAML and in --help
}

// errWant is a value's problem: "want 1 to 1000".
func want(format string, args ...any) error { return fmt.Errorf("want "+format, args...) }

// Int is an integer setting. Min and Max bound what may be given (Max 0:
// no upper bound); a default outside them means "not given" (say what in
// Unset), and is never checked.
type Int struct {
	Spec
	Default, Min, Max int64
	// Zero, when set, admits 0 besides the range, meaning Zero ("off").
	Zero string
	// Unset says what the default means when it is no value ("every process").
	Unset string
	// Check adds rules beyond the range; it returns a "want ..." error,
	// and is asked first, so it may word the range better.
	Check func(int64) error
	// Bounds words the range for --help and the file where "MIN to MAX"
	// does not say it all, or differs between machines.
	Bounds string
	To     func(int64) error
}

func (s *Int) spec() *Spec { return &s.Spec }
func (s *Int) kind() kind {
	bounds := numberBounds(strconv.FormatInt(s.Min, 10), strconv.FormatInt(s.Max, 10), s.Max == 0, s.Zero)
	k := kind{typ: "int", def: s.Default, bounds: cmp.Or(s.Bounds, bounds),
		literal: func(v any) string { return strconv.FormatInt(v.(int64), 10) },
		to:      func(v any) error { return s.To(v.(int64)) },
	}
	if s.Default != 0 || s.Zero == "" {
		if s.Default < s.Min || s.Max != 0 && s.Default > s.Max {
			k.unset = s.Unset
			if k.unset == "" {
				k.unset = "not set"
			}
		}
	}
	k.read = func(text string) (any, error) {
		n, err := strconv.ParseInt(strings.TrimSpace(text), 0, 64)
		if err != nil {
			return nil, want("an integer, %s", bounds)
		}
		if s.Check != nil {
			if err := s.Check(n); err != nil {
				return n, err
			}
		}
		if !(n >= s.Min && (s.Max == 0 || n <= s.Max) || n == 0 && s.Zero != "") {
			return n, want("%s", bounds)
		}
		return n, nil
	}
	return k
}

// Duration is a duration setting, written as Go durations: 500ms, 2m.
// Min, Max and Zero are as Int's.
type Duration struct {
	Spec
	Default, Min, Max time.Duration
	Zero              string
	Unset             string
	To                func(time.Duration) error
}

func (s *Duration) spec() *Spec { return &s.Spec }
func (s *Duration) kind() kind {
	bounds := numberBounds(FormatDuration(s.Min), FormatDuration(s.Max), s.Max == 0, s.Zero)
	if s.Min <= 1 && s.Max == 0 && s.Zero == "" {
		bounds = "more than 0"
	}
	k := kind{typ: "duration", def: s.Default, bounds: bounds,
		literal: func(v any) string { return FormatDuration(v.(time.Duration)) },
		to:      func(v any) error { return s.To(v.(time.Duration)) },
	}
	if s.Default != 0 || s.Zero == "" {
		if s.Default < s.Min || s.Max != 0 && s.Default > s.Max {
			k.unset = s.Unset
			if k.unset == "" {
				k.unset = "not set"
			}
		}
	}
	k.read = func(text string) (any, error) {
		d, err := time.ParseDuration(strings.TrimSpace(text))
		if err != nil {
			return nil, want("a duration such as %s, %s", FormatDuration(max(s.Min, time.Second)), bounds)
		}
		if !(d >= s.Min && (s.Max == 0 || d <= s.Max) || d == 0 && s.Zero != "") {
			return d, want("%s", bounds)
		}
		return d, nil
	}
	return k
}

// Float is a number setting between Min and Max; MinOpen leaves Min out.
type Float struct {
	Spec
	Default, Min, Max float64
	MinOpen           bool
	To                func(float64) error
}

func (s *Float) spec() *Spec { return &s.Spec }
func (s *Float) kind() kind {
	format := func(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
	bounds := format(s.Min) + " to " + format(s.Max)
	if s.MinOpen {
		bounds = "above " + format(s.Min) + ", at most " + format(s.Max)
	}
	return kind{typ: "float64", def: s.Default, bounds: bounds,
		literal: func(v any) string { return format(v.(float64)) },
		to:      func(v any) error { return s.To(v.(float64)) },
		read: func(text string) (any, error) {
			f, err := strconv.ParseFloat(strings.TrimSpace(text), 64)
			if err != nil {
				return nil, want("a number %s", bounds)
			}
			// NaN fails both comparisons.
			if !(f > s.Min || !s.MinOpen && f == s.Min) || !(f <= s.Max) {
				return f, want("%s", bounds)
			}
			return f, nil
		},
	}
}

// Bool is a switch: the flag alone turns it on.
type Bool struct {
	Spec
	Default bool
	To      func(bool) error
}

func (s *Bool) spec() *Spec { return &s.Spec }
func (s *Bool) kind() kind {
	return kind{typ: "bool", def: s.Default,
		quote:   true,
		literal: func(v any) string { return strconv.FormatBool(v.(bool)) },
		to:      func(v any) error { return s.To(v.(bool)) },
		read: func(text string) (any, error) {
			b, err := parseBool(text)
			if err != nil {
				return nil, err
			}
			return b, nil
		},
	}
}

// parseBool takes what strconv does and YAML 1.1's yes, no, on and off.
func parseBool(text string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(text)) {
	case "1", "t", "true", "yes", "y", "on":
		return true, nil
	case "0", "f", "false", "no", "n", "off":
		return false, nil
	}
	return false, want("true or false")
}

// String is a text setting. Check returns a "want ..." error; To may
// fail too, with an error that names what it is about.
type String struct {
	Spec
	Default string
	Check   func(string) error
	To      func(string) error
}

func (s *String) spec() *Spec { return &s.Spec }
func (s *String) kind() kind {
	return kind{typ: "string", def: s.Default,
		quote:   true,
		literal: func(v any) string { return strconv.Quote(v.(string)) },
		to:      func(v any) error { return s.To(v.(string)) },
		read: func(text string) (any, error) {
			if s.Check != nil {
				return text, s.Check(text)
			}
			return text, nil
		},
	}
}

// Strings is a list: a flag given more than once or with commas, a YAML
// sequence. Check applies to each item, To to the whole list.
type Strings struct {
	Spec
	Default []string
	Check   func(string) error
	To      func([]string) error
}

func (s *Strings) spec() *Spec { return &s.Spec }
func (s *Strings) kind() kind {
	return kind{typ: "stringSlice", list: true, def: s.Default,
		quote: true,
		literal: func(v any) string {
			items := v.([]string)
			q := make([]string, len(items))
			for i, x := range items {
				q[i] = strconv.Quote(x)
			}
			return "[" + strings.Join(q, ", ") + "]"
		},
		to: func(v any) error { return s.To(v.([]string)) },
		read: func(text string) (any, error) {
			text = strings.TrimSpace(text)
			if s.Check != nil {
				return text, s.Check(text)
			}
			return text, nil
		},
	}
}

// numberBounds words a range: "1 to 1000", "at least 1", "100ms to 1m,
// or 0 for off".
func numberBounds(lo, hi string, open bool, zero string) string {
	s := lo + " to " + hi
	if open {
		s = "at least " + lo
	}
	if zero != "" {
		s += ", or 0 for " + zero
	}
	return s
}

// FormatDuration writes a duration as one would type it: 1m, not 1m0s.
func FormatDuration(d time.Duration) string {
	if d == 0 {
		return "0"
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// An Error is a bad setting, a bad flag or a bad configuration file: the
// command's usage error, one line.
type Error struct{ msg string }

func (e *Error) Error() string { return e.msg }

func errorf(format string, args ...any) error {
	return &Error{strings.Join(strings.Fields(fmt.Sprintf(format, args...)), " ")}
}

// IsError reports whether err is a settings error.
func IsError(err error) bool {
	var e *Error
	return errors.As(err, &e)
}
