package cachehandler

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// DefaultInvalidateHeader is the response header in which the Ticketi
// server names tags to drop: the Caddy handler's default. (In Config, an
// empty InvalidateHeader means none.)
const DefaultInvalidateHeader = "X-Ticketi-Invalidate"

// DefaultCredentialCookies mark a request as credentialed when
// Config.CredentialCookies is nil: express-session's cookie and
// edge_session's (sessionauth.DefaultCookieName).
var DefaultCredentialCookies = []string{"connect.sid", "ticketi_session"}

// Validate reports what New would refuse in cfg, without building
// anything: the Caddy glue calls it from its Validate. It compiles cfg's
// rules (as New does again).
func (cfg Config) Validate() error {
	cfg.setDefaults()
	return cfg.validate()
}

// setDefaults fills what cfg leaves zero; it and validate are the only
// places the cache's defaults and limits are applied. Negative sizes and
// grace are left for validate to refuse.
func (cfg *Config) setDefaults() {
	if cfg.L1Bytes == 0 {
		cfg.L1Bytes = DefaultL1Bytes
	}
	if cfg.L1TTL <= 0 {
		cfg.L1TTL = DefaultL1TTL
	}
	if cfg.MaxEntryBytes == 0 {
		cfg.MaxEntryBytes = DefaultMaxEntryBytes
	}
	switch {
	case cfg.Grace < 0: // refused by validate
	case cfg.DisableStale:
		cfg.Grace = 0
	case cfg.Grace == 0:
		cfg.Grace = DefaultGrace
	}
	if cfg.CompressMin == 0 {
		cfg.CompressMin = DefaultCompressMin
	}
	if cfg.NegativeTTL <= 0 {
		cfg.NegativeTTL = DefaultNegativeTTL
	}
	if cfg.StatusName == "" {
		cfg.StatusName = DefaultStatusName
	}
	if cfg.CredentialCookies == nil {
		cfg.CredentialCookies = DefaultCredentialCookies
	}
	if cfg.IdentityHeaders == nil {
		cfg.IdentityHeaders = DefaultIdentityHeaders
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
}

// validate checks cfg after setDefaults and compiles its rules,
// invalidations and standards mode.
func (cfg *Config) validate() error {
	if cfg.L1Bytes < 0 || cfg.MaxEntryBytes < 0 || cfg.CompressMin < 0 {
		return errors.New("sizes must not be negative")
	}
	if cfg.Grace < 0 {
		return errors.New("grace must not be negative")
	}
	if len(cfg.Rules) == 0 && len(cfg.Invalidations) == 0 && cfg.Standard == nil {
		return errors.New("no rules and no invalidations: nothing to do")
	}
	names := map[string]bool{}
	for _, r := range cfg.Rules {
		if err := r.compile(cfg.Paths); err != nil {
			return err
		}
		if err := r.compileVary(cfg.IdentityHeaders); err != nil {
			return err
		}
		if names[r.Name] {
			return fmt.Errorf("cache rule name %q is used twice", r.Name)
		}
		names[r.Name] = true
		swr := r.StaleWhileRevalidate
		if swr == 0 {
			swr = cfg.StaleWhileRevalidate
		}
		if swr > cfg.Grace || swr < 0 {
			return fmt.Errorf("cache rule %q: stale_while_revalidate %v exceeds grace %v (entries live ttl+grace)", r.Name, swr, cfg.Grace)
		}
	}
	for _, ir := range cfg.Invalidations {
		if err := ir.compile(cfg.Paths); err != nil {
			return err
		}
	}
	if cfg.Standard != nil {
		if names[StandardRuleName] {
			return fmt.Errorf("cache rule name %q is the standards mode's own", StandardRuleName)
		}
		if err := cfg.Standard.compile(cfg.Paths); err != nil {
			return err
		}
	}
	return nil
}

// maxLife is how long any entry of cfg can live: what tag sets must
// outlive.
func (cfg *Config) maxLife() time.Duration {
	life := time.Duration(0)
	for _, r := range cfg.Rules {
		life = max(life, r.TTL+cfg.Grace)
	}
	if cfg.Standard != nil {
		life = max(life, 2*cfg.Standard.MaxTTL)
	}
	return life
}
