package caddymodule

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("edge_session", parseSessionCaddyfile)
	// Early, so the rate limiter and the cache after it can key on the user.
	httpcaddyfile.RegisterDirectiveOrder("edge_session", httpcaddyfile.After, "basic_auth")
}

// parseSessionCaddyfile sets up the session handler. Syntax:
//
//	edge_session [<matcher>] {
//		signing_keys      <key...>            # ≥ 32 bytes each, or base64:...; first signs
//		storage_key       <key>
//		cookie_name       <name>              # default ticketi_session
//		cookie_path       <path>
//		cookie_domain     <domain>
//		same_site         lax|strict|none
//		insecure_cookie                       # drop Secure (plain-http development only)
//		idle_timeout      <duration>          # default 24h
//		absolute_timeout  <duration>          # default 168h
//		touch_interval    <duration>          # default 1m
//		local_ttl         <duration>          # default 10s
//		outage_grace      <duration>          # default 5m
//		login             <path...>           # default /api/auth/login /api/auth/register
//		logout            <path...>           # default /api/auth/logout
//		identity_header   <header>            # default X-Ticketi-Identity
//		user_headers      <id> <username> <verified>
//		protect           <path...>
//		protect_mutations [except <path...>]
//		login_redirect    <path or https URL>
//		express {
//			secrets     <secret...>
//			cookie_name <name>                # default connect.sid
//			prefix      <prefix>              # default sess:
//			redis       <url>                 # connect-redis's Redis, if not the sessions'
//		}
//		redis             <url>               # a separate Redis for sessions
//	}
func parseSessionCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	return unmarshalHandler(h, new(Session))
}

// UnmarshalCaddyfile parses edge_session (see parseSessionCaddyfile).
func (s *Session) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return parseBlock(d, "edge_session", func(opt string) error {
		var err error
		switch opt {
		case "signing_keys":
			s.SigningKeys = d.RemainingArgs() // may be empty: an unset variable
		case "storage_key":
			s.StorageKey, err = optionalArg(d)
		case "cookie_name":
			s.CookieName, err = requiredArg(d)
		case "cookie_path":
			s.CookiePath, err = requiredArg(d)
		case "cookie_domain":
			s.CookieDomain, err = requiredArg(d)
		case "same_site":
			s.SameSite, err = requiredArg(d)
		case "insecure_cookie":
			if d.NextArg() {
				return d.ArgErr()
			}
			s.InsecureCookie = true
		case "idle_timeout":
			s.IdleTimeout, err = requiredDuration(d)
		case "absolute_timeout":
			s.AbsoluteTimeout, err = requiredDuration(d)
		case "touch_interval":
			s.TouchInterval, err = requiredDuration(d)
		case "local_ttl":
			s.LocalTTL, err = requiredDuration(d)
		case "outage_grace":
			s.OutageGrace, err = requiredDuration(d)
		case "login":
			s.LoginPaths, err = pathArgs(d)
		case "logout":
			s.LogoutPaths, err = pathArgs(d)
		case "identity_header":
			s.IdentityHeader, err = requiredArg(d)
		case "user_headers":
			args := d.RemainingArgs()
			if len(args) != 3 {
				return d.Errf("user_headers needs three names: user id, username, verified")
			}
			s.UserIDHeader, s.UsernameHeader, s.VerifiedHeader = args[0], args[1], args[2]
		case "protect":
			s.Protect, err = pathArgs(d)
		case "protect_mutations":
			s.ProtectMutations = true
			args := d.RemainingArgs()
			if len(args) > 0 {
				if args[0] != "except" || len(args) < 2 {
					return d.Errf("expected: protect_mutations [except <path...>]")
				}
				s.MutationsExcept = args[1:]
			}
		case "login_redirect":
			s.LoginRedirect, err = requiredArg(d)
		case "express":
			err = s.parseExpress(d)
		case "redis":
			s.Redis, err = redisOverride(d)
		default:
			return errUnknownOption
		}
		return err
	})
}

func (s *Session) parseExpress(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	ex := &SessionExpress{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch sub := d.Val(); sub {
		case "secrets":
			ex.Secrets = d.RemainingArgs()
		case "cookie_name":
			ex.CookieName, err = requiredArg(d)
		case "prefix":
			ex.Prefix, err = requiredArg(d)
		case "redis":
			ex.Redis, err = redisOverride(d)
		default:
			return d.Errf("unrecognized express option '%s'", sub)
		}
		if err != nil {
			return err
		}
	}
	s.Express = ex
	return nil
}

func pathArgs(d *caddyfile.Dispenser) ([]string, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.ArgErr()
	}
	for _, a := range args {
		if a == "" || a[0] != '/' {
			return nil, d.Errf("%q is not a path (it must start with /)", a)
		}
	}
	return args, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Session)(nil)
