package caddymodule

import (
	"io/fs"
	"regexp"
	"testing"
)

// The dashboard works without the network: every file it loads is one of
// the embedded ones, and nothing names another host.
func TestDashboardAssetsAreLocal(t *testing.T) {
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|<iframe`)
	found := 0
	err := fs.WalkDir(uiFiles, "ui", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		found++
		body, err := fs.ReadFile(uiFiles, path)
		if err != nil {
			return err
		}
		if m := external.Find(body); m != nil {
			t.Errorf("%s refers to something outside the edge: %q", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found != len(uiContentTypes) {
		t.Errorf("%d embedded files, want one per served type (%d)", found, len(uiContentTypes))
	}
	index, _ := fs.ReadFile(uiFiles, "ui/index.html")
	for _, want := range []string{`src="app.js"`, `href="app.css"`} {
		if !regexp.MustCompile(regexp.QuoteMeta(want)).Match(index) {
			t.Errorf("index.html does not load %s", want)
		}
	}
}
