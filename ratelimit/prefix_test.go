package ratelimit

import "testing"

func TestClientKeyByPrefix(t *testing.T) {
	def := IPPrefixes{}
	for in, want := range map[string]string{
		"203.0.113.9":                    "203.0.113.9",
		"2001:db8:1:2:aaaa:bbbb:cccc:dd": "2001:db8:1:2::/64",
		"2001:db8:1:2::1":                "2001:db8:1:2::/64",
		"2001:DB8:1:2:ffff::":            "2001:db8:1:2::/64",
		"::ffff:203.0.113.9":             "203.0.113.9",
		"fe80::1%eth0":                   "fe80::/64",
	} {
		if got, ok := def.ClientKey(in); !ok || got != want {
			t.Errorf("%s: %q %v, want %q", in, got, ok, want)
		}
	}
	wide := IPPrefixes{V4: 24, V6: 48}
	for in, want := range map[string]string{
		"203.0.113.9":     "203.0.113.0/24",
		"2001:db8:1:2::1": "2001:db8:1::/48",
	} {
		if got, _ := wide.ClientKey(in); got != want {
			t.Errorf("%s with %+v: %q, want %q", in, wide, got, want)
		}
	}
	if got, ok := def.ClientKey("not-an-ip"); ok || got != "not-an-ip" {
		t.Errorf("non-address: %q %v", got, ok)
	}
	for _, bad := range []IPPrefixes{{V4: 33}, {V6: 129}, {V4: -1}} {
		if bad.Validate() == nil {
			t.Errorf("%+v validated", bad)
		}
	}
}
