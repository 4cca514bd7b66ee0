package cachehandler

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/ticketi/edge/internal/ticketisim"
)

// expressVectors is testdata/express-routing/vectors*.json: what real
// Express (4.21 and 5.x) routed each raw path to, with default and with
// strict settings.
type expressVectors struct {
	Express string `json:"express"`
	Routes  []struct {
		Method, Name, Path string
	} `json:"routes"`
	Default []expressVector `json:"default"`
	Strict  []expressVector `json:"strict"`
}

type expressVector struct {
	Method string            `json:"method"`
	Path   string            `json:"path"`
	Route  *string           `json:"route"`
	Params map[string]string `json:"params"`
}

// TestPathsMatchAsExpressRoutesThem replays Express's own routing decisions:
// every path must reach the same route with the same parameters, or no route
// where Express answers 404. Anything else is a path variant that gets a
// second entry or escapes an invalidation.
func TestPathsMatchAsExpressRoutesThem(t *testing.T) {
	for _, file := range []string{"vectors.json", "vectors-express5.json"} {
		raw, err := os.ReadFile("../testdata/express-routing/" + file)
		if err != nil {
			t.Fatal(err)
		}
		var v expressVectors
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatal(err)
		}
		checkExpressVectors(t, v)
	}
}

func checkExpressVectors(t *testing.T, v expressVectors) {
	for _, mode := range []struct {
		name    string
		opts    PathMatching
		vectors []expressVector
	}{
		{"default", PathMatching{}, v.Default},
		{"strict", PathMatching{CaseSensitive: true, Strict: true}, v.Strict},
	} {
		type route struct {
			method, name string
			pat          pattern
		}
		var routes []route
		for _, r := range v.Routes {
			segs := strings.Split(r.Path, "/")
			for i, s := range segs {
				if strings.HasPrefix(s, ":") {
					segs[i] = "{" + s[1:] + "}"
				}
			}
			pat, err := compilePattern(strings.Join(segs, "/"), mode.opts)
			if err != nil {
				t.Fatal(err)
			}
			routes = append(routes, route{r.Method, r.Name, pat})
		}
		if len(mode.vectors) < 90 {
			t.Fatalf("%s: only %d vectors", mode.name, len(mode.vectors))
		}
		for _, vec := range mode.vectors {
			got, gotParams := "", map[string]string{}
			for _, r := range routes {
				if r.method != vec.Method {
					continue
				}
				if ps, ok := r.pat.match(vec.Path, nil); ok {
					got = r.name
					for _, p := range ps {
						gotParams[p.name] = p.value
					}
					break
				}
			}
			want := ""
			if vec.Route != nil {
				want = *vec.Route
			}
			if got != want {
				t.Errorf("%s %s %s: edge matched %q, Express %s routed it to %q", mode.name, vec.Method, vec.Path, got, v.Express, want)
				continue
			}
			for name, val := range vec.Params {
				if gotParams[name] != val {
					t.Errorf("%s %s %s: {%s} = %q, Express has %q", mode.name, vec.Method, vec.Path, name, gotParams[name], val)
				}
			}
		}
	}
}

// expressLike routes like Express's defaults in front of the simulator
// (whose ServeMux is case-sensitive and strict): lower-case, one trailing
// slash dropped.
func expressLike(sim *ticketisim.Sim) NextFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		r2 := r.Clone(r.Context())
		p := strings.ToLower(r.URL.Path)
		if len(p) > 1 {
			p = strings.TrimSuffix(p, "/")
		}
		r2.URL.Path, r2.URL.RawPath = p, ""
		sim.ServeHTTP(w, r2)
		return nil
	}
}

// A path variant that Express sends to the same handler must hit the same
// entry and must invalidate it.
func TestPathVariantsShareTheEntryAndInvalidateIt(t *testing.T) {
	g := newRig(t, nil)
	g.next = expressLike(g.sim)
	g.get("/api/events/42")
	for _, variant := range []string{"/api/events/42/", "/API/events/42", "/api/Events/42", "/API/EVENTS/42/", "/api/events/%34%32"} {
		if cs := g.get(variant).Header().Get("Cache-Status"); cs != "ticketi-edge; hit" {
			t.Errorf("GET %s: Cache-Status %q, want a hit on event:42's entry", variant, cs)
		}
	}
	if n := g.origin(eventRoute); n != 1 {
		t.Fatalf("origin saw %d requests for event 42, want 1 (variants made their own entries)", n)
	}
	for i, variant := range []string{"/api/events/42/", "/API/events/42", "/api/Events/42"} {
		title := "Changed " + variant
		if w := g.do(putRequest(variant, title)); w.Code != 200 {
			t.Fatalf("PUT %s: %d %s", variant, w.Code, w.Body.String())
		}
		if got := titleOf(t, g.get("/api/events/42")); got != title {
			t.Fatalf("PUT %s left event 42 stale: read %q", variant, got)
		}
		if n := g.origin(eventRoute); n != int64(i+2) {
			t.Fatalf("after PUT %s the origin saw %d reads", variant, n)
		}
	}
}

// With strict matching (the upstream sets Express's "case sensitive
// routing" and "strict routing"), variants are other routes: never served
// event 42's entry.
func TestStrictPathMatching(t *testing.T) {
	g := newRig(t, func(c *Config) { c.Paths = PathMatching{CaseSensitive: true, Strict: true} })
	g.get("/api/events/42")
	for _, variant := range []string{"/api/events/42/", "/API/events/42", "/api/Events/42"} {
		if cs := g.get(variant).Header().Get("Cache-Status"); cs != "" {
			t.Errorf("GET %s under strict matching: Cache-Status %q, want no rule", variant, cs)
		}
	}
}

func putRequest(path, title string) *http.Request {
	r := httptest.NewRequest("PUT", "http://edge.test"+path, strings.NewReader(`{"title":"`+title+`"}`))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set(ticketisim.HeaderUserID, "1")
	return r
}
