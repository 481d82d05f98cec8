package deploy

import (
	"bufio"
	"os"
	"strings"
	"testing"
	"unicode"
)

// instruction is one Dockerfile instruction: its keyword (upper case) and
// the rest of the line, continuation lines joined.
type instruction struct {
	cmd, args string
}

// stage is one FROM and the instructions after it.
type stage struct {
	from, name string
	instrs     []instruction
}

// parseDockerfile reads the stages of a Dockerfile. It knows what this
// project's Dockerfile uses: comments, line continuations, one instruction
// per logical line.
func parseDockerfile(t *testing.T, path string) []stage {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stages []stage
	var logical strings.Builder
	flush := func() {
		line := strings.TrimSpace(logical.String())
		logical.Reset()
		if line == "" {
			return
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			s := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			return
		}
		if len(stages) == 0 {
			if in.cmd == "ARG" {
				return // global build arguments
			}
			t.Fatalf("%s: %s before FROM", path, in.cmd)
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			logical.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		logical.WriteString(line)
		flush()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	flush()
	return stages
}

// shellWords splits a command line as a POSIX shell would for the simple
// words a Dockerfile's RUN line uses: blanks separate words, single and
// double quotes group, $NAME and ${NAME} expand from vars (not inside single
// quotes). Anything fancier fails the test rather than being misread.
func shellWords(t *testing.T, s string, vars map[string]string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	inWord := false
	quote := rune(0)
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote == 0 && unicode.IsSpace(r):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case quote == 0 && (r == '"' || r == '\''):
			quote, inWord = r, true
		case quote != 0 && r == quote:
			quote = 0
		case r == '$' && quote != '\'':
			j := i + 1
			var name string
			if j < len(rs) && rs[j] == '{' {
				end := strings.IndexRune(string(rs[j:]), '}')
				if end < 0 {
					t.Fatalf("unterminated ${ in %q", s)
				}
				name = string(rs[j+1 : j+end])
				i = j + end
			} else {
				for j < len(rs) && (rs[j] == '_' || unicode.IsLetter(rs[j]) || unicode.IsDigit(rs[j])) {
					j++
				}
				name = string(rs[i+1 : j])
				i = j - 1
			}
			v, ok := vars[name]
			if !ok {
				t.Fatalf("$%s in %q is neither an ARG nor an ENV of the stage", name, s)
			}
			if quote == 0 && strings.ContainsFunc(v, unicode.IsSpace) {
				t.Fatalf("$%s expands to blanks outside quotes in %q", name, s)
			}
			cur.WriteString(v)
			inWord = true
		case quote == 0 && strings.ContainsRune("|&;<>()`\\*?", r):
			t.Fatalf("shell syntax %q in %q: keep the build a single plain command", r, s)
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

func TestShellWords(t *testing.T) {
	vars := map[string]string{"A": "x y", "B": ""}
	cases := map[string][]string{
		`go build -o /out/bin ./cmd`:       {"go", "build", "-o", "/out/bin", "./cmd"},
		`-ldflags "-s -w -X p.V=${A}" .`:   {"-ldflags", "-s -w -X p.V=x y", "."},
		`-X p.V=${B} '$A' "$A"`:            {"-X", "p.V=", "$A", "x y"},
		`"" a`:                             {"", "a"},
		`-ldflags="-X p.C=$B -X p.V=$A" b`: {"-ldflags=-X p.C= -X p.V=x y", "b"},
	}
	for in, want := range cases {
		got := shellWords(t, in, vars)
		if strings.Join(got, "|") != strings.Join(want, "|") || len(got) != len(want) {
			t.Errorf("%q: got %q want %q", in, got, want)
		}
	}
}
