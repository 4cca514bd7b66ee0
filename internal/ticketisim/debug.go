package ticketisim

import (
	"errors"
	"net/http"
	"time"
)

// maxLatency bounds /__sim/config so a typo cannot park every request for hours.
const maxLatency = 10 * time.Minute

// registerDebugRoutes adds the /__sim control routes. They bypass counting,
// latency and failing mode, so tests can always read and steer the sim.
func (s *Sim) registerDebugRoutes() {
	s.mux.HandleFunc("GET /__sim/stats", s.debugStats)
	s.mux.HandleFunc("POST /__sim/reset", s.debugReset)
	s.mux.HandleFunc("GET /__sim/config", s.debugConfig)
	s.mux.HandleFunc("POST /__sim/config", s.debugSetConfig)
	s.mux.HandleFunc("/__sim/echo", s.debugEcho)
	s.mux.HandleFunc("/__sim/echo/", s.debugEcho)
}

func (s *Sim) debugStats(w http.ResponseWriter, r *http.Request) {
	routes := s.Stats()
	var total int64
	for _, n := range routes {
		total += n
	}
	// A test may ask for a cacheable echo, to see what a cache stored.
	if cc := r.Header.Get(HeaderEchoCacheControl); cc != "" {
		w.Header().Set("Cache-Control", cc)
	}
	writeRaw(w, http.StatusOK, struct {
		Routes map[string]int64 `json:"routes"`
		Total  int64            `json:"total"`
	}{routes, total})
}

// debugReset zeroes the counters; with ?data=1 it also restores the seed data.
func (s *Sim) debugReset(w http.ResponseWriter, r *http.Request) {
	s.Reset()
	reseeded := false
	switch r.URL.Query().Get("data") {
	case "1", "true":
		s.Reseed()
		reseeded = true
	}
	// A test may ask for a cacheable echo, to see what a cache stored.
	if cc := r.Header.Get(HeaderEchoCacheControl); cc != "" {
		w.Header().Set("Cache-Control", cc)
	}
	writeRaw(w, http.StatusOK, struct {
		OK       bool `json:"ok"`
		Reseeded bool `json:"reseeded"`
	}{true, reseeded})
}

type configBody struct {
	LatencyMs *int64 `json:"latencyMs"`
	Failing   *bool  `json:"failing"`
}

func (s *Sim) currentConfig() configBody {
	ms, failing := s.Latency().Milliseconds(), s.Failing()
	return configBody{LatencyMs: &ms, Failing: &failing}
}

func (s *Sim) debugConfig(w http.ResponseWriter, r *http.Request) {
	writeRaw(w, http.StatusOK, s.currentConfig())
}

func (s *Sim) debugSetConfig(w http.ResponseWriter, r *http.Request) {
	var in configBody
	if err := decodeJSON(w, r, &in); err != nil {
		ae := errBadJSON
		errors.As(err, &ae)
		writeRaw(w, ae.status, errorBody{ae.msg})
		return
	}
	if in.LatencyMs != nil {
		d := time.Duration(*in.LatencyMs) * time.Millisecond
		if *in.LatencyMs < 0 || d > maxLatency {
			writeRaw(w, http.StatusBadRequest, errorBody{"latencyMs must be between 0 and 600000"})
			return
		}
		s.SetLatency(d)
	}
	if in.Failing != nil {
		s.SetFailing(*in.Failing)
	}
	writeRaw(w, http.StatusOK, s.currentConfig())
}

// debugEcho reports the request as it reached the origin, so end-to-end tests
// can prove which headers the edge added, kept or stripped. Go moves Host out
// of the header map, so it is reported on its own.
func (s *Sim) debugEcho(w http.ResponseWriter, r *http.Request) {
	headers := r.Header
	if headers == nil {
		headers = http.Header{}
	}
	// A test may ask for a cacheable echo, to see what a cache stored.
	if cc := r.Header.Get(HeaderEchoCacheControl); cc != "" {
		w.Header().Set("Cache-Control", cc)
	}
	if v := r.Header.Get(HeaderEchoVary); v != "" {
		w.Header().Set("Vary", v)
	}
	writeRaw(w, http.StatusOK, struct {
		Method        string      `json:"method"`
		Path          string      `json:"path"`
		Query         string      `json:"query"`
		Host          string      `json:"host"`
		Proto         string      `json:"proto"`
		ContentLength int64       `json:"contentLength"`
		Headers       http.Header `json:"headers"`
	}{r.Method, r.URL.Path, r.URL.RawQuery, r.Host, r.Proto, r.ContentLength, headers})
}
