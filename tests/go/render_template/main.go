// Command render_template executes an Ollama TEMPLATE the way Ollama does, for the tests.
//
// It reads one JSON object on stdin and writes the rendered prompt to stdout:
//
//	{"template": "...", "messages": [{"role": "...", "content": "..."}, ...]}
//	    Ollama's chat path: the system messages are joined into .System, and
//	    .Messages holds every message (system ones included), consecutive messages of
//	    one role merged, as Ollama collates a request.
//	{"template": "...", "system": "...", "prompt": "..."}
//	    Ollama's legacy one-turn path: .System, .Prompt and an empty .Response.
//
// The template is parsed with Go's own text/template and only its builtins, with
// missing keys rendering as zero values, as Ollama parses it.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type request struct {
	Template string     `json:"template"`
	Messages []*message `json:"messages"`
	System   string     `json:"system"`
	Prompt   string     `json:"prompt"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fail("reading the request: %v", err)
	}
	tmpl, err := template.New("modelfile").Option("missingkey=zero").Parse(req.Template)
	if err != nil {
		fail("parsing the template: %v", err)
	}
	data := map[string]any{"System": req.System, "Prompt": req.Prompt, "Response": ""}
	if req.Messages != nil {
		system, messages := collate(req.Messages)
		data = map[string]any{"System": system, "Messages": messages, "Response": ""}
	}
	if err := tmpl.Execute(os.Stdout, data); err != nil {
		fail("executing the template: %v", err)
	}
}

// collate does what Ollama does to a chat request before rendering it: every system
// message's content joined by blank lines becomes .System, and a message of the same
// role as the one before it is appended to that one.
func collate(messages []*message) (string, []*message) {
	var system []string
	var merged []*message
	for _, m := range messages {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(merged); n > 0 && merged[n-1].Role == m.Role {
			merged[n-1].Content += "\n\n" + m.Content
			continue
		}
		copied := *m
		merged = append(merged, &copied)
	}
	return strings.Join(system, "\n\n"), merged
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "render_template: "+format+"\n", args...)
	os.Exit(1)
}
