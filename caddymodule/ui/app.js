// Ticketi Edge live dashboard. Reads GET data (relative to /edge/ui/) every
// few seconds and acts through the edge's admin routes. No libraries; every
// value from the server is put in the page as text, never as HTML.
'use strict';

const params = new URLSearchParams(location.search);
const refreshMs = Math.max(250, Number(params.get('refresh')) || 3000);
const historyMs = 10 * 60 * 1000;
const palette = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f'];

const samples = []; // {t, rules: {name: {hits, misses, stale}}}
let lastData = null;
let prevLatency = null; // {t, answered, failed} at the previous refresh
const api = location.pathname.replace(/ui\/.*$/, ''); // "/edge/"

const $ = (id) => document.getElementById(id);
function setText(id, v) { const el = $(id); if (el) el.textContent = String(v); }
function fmtInt(n) { return Number(n || 0).toLocaleString('en-US'); }
function pct(part, whole) { return whole > 0 ? (100 * part / whole).toFixed(1) + '%' : '–'; }
function fmtBytes(n) {
	const units = ['B', 'KiB', 'MiB', 'GiB'];
	let i = 0;
	for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
	return (i ? n.toFixed(1) : n) + ' ' + units[i];
}
function fmtMs(seconds) { return seconds == null ? '–' : (seconds * 1000).toFixed(seconds < 0.001 ? 3 : 2) + ' ms'; }
function fmtTime(ms) { return ms ? new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '–'; }
function setClass(id, cls) { const el = $(id); if (el) el.className = 'big ' + cls; }

function fillTable(id, rows) {
	const body = $(id).tBodies[0];
	const out = document.createDocumentFragment();
	for (const cells of rows) {
		const tr = document.createElement('tr');
		for (const c of cells) {
			const td = document.createElement('td');
			if (c instanceof Node) td.appendChild(c); else td.textContent = String(c);
			tr.appendChild(td);
		}
		out.appendChild(tr);
	}
	body.replaceChildren(out);
}

// modules splits /edge/stats "modules" by kind, as `caddy edge stats` does.
function modules(stats) {
	const m = { caches: {}, limiters: {}, sessions: {} };
	for (const [name, v] of Object.entries(stats.modules || {})) {
		if (v && v.engine) m.caches[name] = v;
		else if (v && v.tiers) m.limiters[name] = v;
		else if (v && v.results) m.sessions[name] = v;
	}
	return m;
}

// quantile estimates a quantile from the difference of two cumulative
// histograms, interpolating inside the bucket as Prometheus does.
function quantile(q, now, before) {
	const b = now.buckets.map((x, i) => ({ le: x.le, count: x.count - (before && before.buckets[i] ? before.buckets[i].count : 0) }));
	const total = now.count - (before ? before.count : 0);
	if (total <= 0 || b.length === 0) return null;
	const rank = q * total;
	let prevLe = 0, prevCount = 0;
	for (const x of b) {
		if (x.count >= rank) {
			const inBucket = x.count - prevCount;
			return inBucket > 0 ? prevLe + (x.le - prevLe) * (rank - prevCount) / inBucket : x.le;
		}
		prevLe = x.le; prevCount = x.count;
	}
	return b[b.length - 1].le; // beyond the last bound
}

function renderRedisInfo(st) {
	const i = st.redis_info;
	if (!i) {
		const why = st.redis_info_error || (st.store === 'embedded' ? 'embedded' : '–');
		setText('redis-memory', why.length > 20 ? 'n/a' : why); setText('redis-peak', '–'); setText('redis-frag', '–');
		setText('redis-keys', '–'); setText('redis-evicted', '–'); setText('redis-expired', '–');
		if (st.redis_info_error) $('redis-memory').title = st.redis_info_error;
		return;
	}
	setText('redis-memory', fmtBytes(i.used_memory) + (i.maxmemory > 0 ? ' of ' + fmtBytes(i.maxmemory) : ''));
	setText('redis-peak', fmtBytes(i.used_memory_peak));
	setText('redis-frag', i.mem_fragmentation_ratio.toFixed(2));
	setText('redis-keys', fmtInt(i.keys));
	setText('redis-evicted', fmtInt(i.evicted_keys));
	setClass('redis-keys', i.evicted_keys > 0 ? 'warn' : '');
	setText('redis-expired', fmtInt(i.expired_keys));
}

function renderRedis(d) {
	const st = d.stats;
	setText('store-mode', st.store);
	renderRedisInfo(st);
	const r = st.redis;
	if (!r) {
		setText('breaker', 'n/a'); setText('fallback', 'n/a'); setText('fallback-entries', 0);
		setText('redis-latency', 'embedded'); setText('redis-p99', '–'); setText('redis-calls', '–'); setText('redis-failed', '–');
		setText('pool-use', 'n/a'); setText('pool-detail', 'no Redis configured');
		setClass('breaker', '');
		return;
	}
	setText('breaker', r.breaker);
	setClass('breaker', r.breaker === 'closed' ? 'ok' : 'bad');
	let fb = r.fallback_mode ? 'ON' : 'off';
	if (r.fallback_mode && r.open_since) fb += ' for ' + Math.round((Date.parse(d.time) - Date.parse(r.open_since)) / 1000) + ' s';
	setText('fallback', fb);
	setText('fallback-entries', fmtInt(r.fallback_entries));
	const p = r.pool || {};
	const use = p.size > 0 ? p.in_use / p.size : 0;
	setText('pool-use', p.size > 0 ? (100 * use).toFixed(0) + '%' : '–');
	setClass('pool-use', use > 0.8 ? 'bad' : use > 0.6 ? 'warn' : 'ok');
	setText('pool-detail', `${p.in_use || 0} in use, ${p.idle || 0} idle of ${p.size || 0}; ${p.timeouts || 0} timeouts`);
	const lat = d.redis_latency;
	if (lat) {
		const t = Date.parse(d.time);
		const before = prevLatency;
		const calls = lat.answered.count - (before ? before.answered.count : 0);
		const secs = before ? (t - before.t) / 1000 : 0;
		const sum = lat.answered.sum_seconds - (before ? before.answered.sum_seconds : 0);
		if (calls > 0) {
			setText('redis-latency', fmtMs(sum / calls));
			setText('redis-p99', fmtMs(quantile(0.99, lat.answered, before && before.answered)));
		} else if (!before && lat.answered.count > 0) {
			setText('redis-latency', fmtMs(lat.answered.sum_seconds / lat.answered.count));
		}
		if (secs > 0) {
			setText('redis-calls', (calls / secs).toFixed(1));
			setText('redis-failed', ((lat.failed.count - before.failed.count) / secs).toFixed(1));
		}
		prevLatency = { t, answered: lat.answered, failed: lat.failed };
	}
}

function renderCache(d, m) {
	const inst = d.stats.cache.instance;
	setText('hit-rate', inst.totalOperations > 0 ? inst.hitRate.toFixed(1) + '%' : '–');
	setText('lookups', fmtInt(inst.totalOperations));
	const fleet = d.stats.cache.fleet;
	setText('fleet-rate', fleet ? `; fleet ${fleet.hitRate.toFixed(1)}% of ${fmtInt(fleet.totalOperations)}` : '');
	let l1 = 0, l1b = 0, fills = 0, stale = 0;
	const rows = [];
	const now = { t: Date.parse(d.time), rules: {} };
	for (const [cname, c] of Object.entries(m.caches)) {
		l1 += c.engine.l1_entries; l1b += c.engine.l1_bytes; fills += c.engine.fills_in_flight;
		for (const [rule, r] of Object.entries(c.rules || {})) {
			const label = Object.keys(m.caches).length > 1 ? cname + '/' + rule : rule;
			stale += r.stale;
			rows.push([label, fmtInt(r.hits), fmtInt(r.misses), pct(r.hits, r.hits + r.misses + r.stale), fmtInt(r.stale), fmtInt(r.bypass), fmtInt(r.stored)]);
			now.rules[label] = { hits: r.hits, misses: r.misses, stale: r.stale };
		}
	}
	rows.sort((a, b) => a[0] < b[0] ? -1 : 1);
	fillTable('rules', rows);
	const advice = [];
	for (const [cname, c] of Object.entries(m.caches)) {
		for (const [rule, a] of Object.entries(c.ttl_advice || {})) {
			const label = Object.keys(m.caches).length > 1 ? cname + '/' + rule : rule;
			advice.push([label, a.ttl_seconds + ' s', a.suggested_ttl_seconds + ' s', a.lookups_per_min.toFixed(1), a.fills_per_min.toFixed(1), a.reason]);
		}
	}
	advice.sort((a, b) => a[0] < b[0] ? -1 : 1);
	fillTable('ttl-advice', advice);
	const ages = [];
	for (const [cname, c] of Object.entries(m.caches)) {
		for (const [rule, a] of Object.entries(c.ttl_advice || {})) {
			const g = a.entry_ages;
			if (!g) continue;
			const label = Object.keys(m.caches).length > 1 ? cname + '/' + rule : rule;
			const hist = g.buckets.map((b) => (b.le ? '≤' + Math.round(100 * b.le) + '%' : '>100%') + ': ' + b.count).join(', ');
			ages.push([label, a.invalidated_entries_per_min.toFixed(1), fmtInt(g.measured), Math.round(100 * g.median_ttl_fraction) + '%', hist]);
		}
	}
	ages.sort((a, b) => a[0] < b[0] ? -1 : 1);
	fillTable('entry-ages', ages);
	setText('l1-entries', fmtInt(l1));
	setText('l1-bytes', fmtBytes(l1b));
	setText('fills-in-flight', fmtInt(fills));
	setText('stale-served', fmtInt(stale));
	const prev = samples[samples.length - 1];
	if (prev && now.t > prev.t) {
		now.ops = inst.totalOperations;
		if (prev.ops !== undefined) setText('ops-per-min', fmtInt(Math.round((inst.totalOperations - prev.ops) * 60000 / (now.t - prev.t))));
	} else {
		now.ops = inst.totalOperations;
	}
	samples.push(now);
	while (samples.length > 2 && now.t - samples[0].t > historyMs) samples.shift();
	drawChart();
}

function drawChart() {
	const canvas = $('hit-chart');
	const ctx = canvas.getContext('2d');
	const w = canvas.width, h = canvas.height, left = 36, bottom = 18;
	ctx.clearRect(0, 0, w, h);
	ctx.font = '11px system-ui, sans-serif';
	ctx.fillStyle = '#6b7385';
	ctx.strokeStyle = '#e3e6eb';
	for (const y of [0, 0.5, 1]) {
		const py = (h - bottom) * (1 - y) + 0.5;
		ctx.beginPath(); ctx.moveTo(left, py); ctx.lineTo(w, py); ctx.stroke();
		ctx.fillText((y * 100) + '%', 2, Math.min(h - bottom, Math.max(10, py + 4)));
	}
	// The x axis spans the history this page has (it starts empty when the
	// page opens), up to historyMs: a page open for a minute uses the whole
	// width for that minute instead of its last tenth.
	const end = samples.length ? samples[samples.length - 1].t : Date.now();
	const span = samples.length > 1 ? Math.min(historyMs, Math.max(1, end - samples[0].t)) : historyMs;
	const x = (t) => left + (w - left) * (1 - (end - t) / span);
	ctx.fillText('-' + fmtSeconds(span / 1000), left, h - 4);
	ctx.fillText('now', w - 24, h - 4);
	const legend = [];
	const rules = samples.length ? Object.keys(samples[samples.length - 1].rules).sort() : [];
	let color = 0;
	for (const rule of rules) {
		const pts = [];
		let first = null; // the rule's oldest counts in the window, for the legend
		for (let i = 1; i < samples.length; i++) {
			const a = samples[i - 1].rules[rule], b = samples[i].rules[rule];
			if (!a || !b) continue;
			first = first || a;
			const dh = b.hits - a.hits, dt = dh + (b.misses - a.misses) + (b.stale - a.stale);
			if (dt > 0) pts.push([samples[i].t, dh / dt]);
		}
		if (pts.length === 0) continue;
		const newest = samples[samples.length - 1].rules[rule] || first;
		const hits = newest.hits - first.hits, total = hits + (newest.misses - first.misses) + (newest.stale - first.stale);
		const c = palette[color++ % palette.length];
		ctx.strokeStyle = c; ctx.fillStyle = c; ctx.lineWidth = 1.5;
		ctx.beginPath();
		pts.forEach(([t, v], i) => { const px = x(t), py = (h - bottom) * (1 - v); if (i) ctx.lineTo(px, py); else ctx.moveTo(px, py); });
		ctx.stroke();
		if (pts.length === 1) { ctx.fillRect(x(pts[0][0]) - 2, (h - bottom) * (1 - pts[0][1]) - 2, 4, 4); }
		// The legend gives the ratio over the whole window: one refresh holds
		// a handful of lookups of a quiet rule, and the last point stays
		// on screen unchanged once its traffic stops.
		legend.push([rule, c, total > 0 ? (100 * hits / total).toFixed(0) + '%' : '–']);
	}
	const ul = $('hit-legend');
	ul.replaceChildren(...legend.map(([rule, c, v]) => {
		const li = document.createElement('li');
		li.style.setProperty('--swatch', c);
		li.textContent = `${rule} ${v}`;
		li.dataset.rule = rule;
		return li;
	}));
	canvas.dataset.series = String(legend.length);
	canvas.dataset.spanMs = String(span);
}

function renderLimits(d, m) {
	const rows = [];
	for (const [name, l] of Object.entries(m.limiters)) {
		for (const [tier, t] of Object.entries(l.tiers || {})) {
			rows.push([name, tier, fmtInt(t.allowed), fmtInt(t.denied), pct(t.denied, t.allowed + t.denied)]);
		}
	}
	fillTable('tiers', rows);
	const off = [];
	for (const l of Object.values(d.limiters || {})) {
		for (const o of l.top || []) off.push([o.tier, o.key, fmtInt(o.denied), fmtTime(Date.parse(o.last_denied))]);
	}
	fillTable('offenders', off);
}

function renderSessions(m) {
	const totals = {};
	let created = 0;
	for (const s of Object.values(m.sessions)) {
		created += s.creates;
		for (const [k, v] of Object.entries(s.results || {})) totals[k] = (totals[k] || 0) + v;
	}
	setText('sessions-valid', fmtInt(totals.valid || 0));
	setText('sessions-created', fmtInt(created));
	setText('sessions-refused', fmtInt((totals.invalid || 0) + (totals.expired || 0) + (totals.unknown || 0) + (totals.unavailable || 0)));
	fillTable('session-results', Object.keys(totals).sort().map((k) => [k, fmtInt(totals[k])]));
}

function renderAudit(d) {
	setText('audit-source', d.audit_error ? 'error: ' + d.audit_error : d.audit_source === 'redis' ? "the fleet's Redis Stream" : "this edge's memory");
	fillTable('audit', (d.audit || []).map((e) => [
		fmtTime(Date.parse(e.time)), e.edge, e.kind, e.action,
		Object.keys(e.detail || {}).sort().map((k) => k + '=' + e.detail[k]).join(' '),
	]));
}

function render(d) {
	lastData = d;
	const m = modules(d.stats);
	renderRedis(d);
	renderCache(d, m);
	renderLimits(d, m);
	renderSessions(m);
	renderAudit(d);
	setText('updated', fmtTime(Date.parse(d.time)).slice(11)); // UTC, as the tables
	document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
}

function setStatus(ok, text) {
	const el = $('status');
	el.textContent = text;
	el.className = 'status ' + (ok ? 'ok' : 'bad');
}

async function refresh() {
	try {
		const res = await fetch(api + 'ui/data', { cache: 'no-store' });
		if (!res.ok) throw new Error(await errorText(res));
		render(await res.json());
		setStatus(true, 'live');
		document.body.classList.remove('stale');
	} catch (e) {
		// The figures stay for reference, dimmed: they are from the last
		// refresh that worked ("updated" says when), not the edge's state now.
		setStatus(false, 'cannot read the edge: ' + e.message);
		document.body.classList.add('stale');
	} finally {
		setTimeout(refresh, refreshMs);
	}
}

async function errorText(res) {
	try {
		const body = await res.json();
		if (body && body.error) return `${res.status}: ${body.error}`;
	} catch (_) { /* not JSON */ }
	return `${res.status} ${res.statusText}`;
}

// call sends one admin request and returns its JSON answer, or throws with
// the admin API's error message.
async function call(method, path, body) {
	const init = { method, headers: {} };
	if (body !== undefined) {
		init.headers['Content-Type'] = 'application/json';
		init.body = JSON.stringify(body);
	}
	const res = await fetch(api + path, init);
	if (!res.ok) throw new Error(await errorText(res));
	return res.json();
}

function setOutput(id, ok, text) {
	const el = $(id);
	el.textContent = text;
	el.className = ok ? 'ok' : 'bad';
}

$('purge-form').addEventListener('submit', async (ev) => {
	ev.preventDefault();
	const by = $('purge-by').value, value = $('purge-value').value.trim();
	if (!value) return;
	const body = { [by]: value };
	if ($('purge-soft').checked) body.soft = true;
	setOutput('purge-result', true, 'purging…');
	try {
		const res = await call('POST', 'cache/purge', body);
		if (res.soft) setOutput('purge-result', true, `marked ${res.purged} entries stale (soft purge, ${by} ${value})`);
		else if (body.soft) setOutput('purge-result', false, `purged ${res.purged} entries hard: Redis was unreachable, so the soft purge was done hard (${by} ${value})`);
		else setOutput('purge-result', true, `purged ${res.purged} entries (${by} ${value})`);
	} catch (e) {
		setOutput('purge-result', false, 'purge failed: ' + e.message);
	}
});

async function lookupSessions() {
	const user = $('session-user').value.trim();
	if (!user) return;
	try {
		const res = await call('GET', 'sessions/' + encodeURIComponent(user));
		const list = res.sessions || [];
		fillTable('session-list', list.map((s) => {
			const end = document.createElement('button');
			end.type = 'button';
			end.textContent = 'end';
			end.addEventListener('click', async () => {
				try {
					await call('DELETE', 'sessions/' + encodeURIComponent(user) + '/' + encodeURIComponent(s.handle));
					setOutput('session-result', true, `ended session ${s.handle}`);
				} catch (e) {
					setOutput('session-result', false, 'failed: ' + e.message);
				}
				lookupSessions();
			});
			return [s.handle, s.username, fmtTime(s.createdAt), fmtTime(s.lastActivity), s.ipAddress, (s.userAgent || '').slice(0, 60), end];
		}));
		setOutput('session-result', true, `${list.length} sessions for user ${user}`);
	} catch (e) {
		fillTable('session-list', []);
		setOutput('session-result', false, 'lookup failed: ' + e.message);
	}
}

$('session-form').addEventListener('submit', (ev) => { ev.preventDefault(); lookupSessions(); });
$('session-destroy').addEventListener('click', async () => {
	const user = $('session-user').value.trim();
	if (!user) return;
	try {
		const res = await call('DELETE', 'sessions/' + encodeURIComponent(user));
		setOutput('session-result', true, `ended ${res.destroyed} sessions of user ${user}`);
		fillTable('session-list', []);
	} catch (e) {
		setOutput('session-result', false, 'failed: ' + e.message);
	}
});

function fmtSeconds(s) {
	if (s == null) return '–';
	const a = Math.abs(s), sign = s < 0 ? '-' : '';
	if (a < 120) return sign + a.toFixed(a < 10 ? 1 : 0) + ' s';
	if (a < 7200) return sign + (a / 60).toFixed(1) + ' min';
	return sign + (a / 3600).toFixed(1) + ' h';
}

// showEntry fills the entry table from a /edge/cache/entry answer.
function showEntry(res) {
	const rows = [];
	for (const [cname, info] of Object.entries(res.caches || {})) {
		for (const [layer, s] of [['L1', info.l1], ['redis', info.l2]]) {
			if (layer === 'redis' && info.redis === 'none') continue;
			if (!s) {
				const what = layer === 'redis' && info.redis === 'unreachable' ? 'unreachable: ' + info.redis_error : 'not stored';
				rows.push([cname, layer, info.rule || '', what, '', '', '', '', '', '', '']);
				continue;
			}
			rows.push([cname, layer, info.rule || '', s.state, s.servable ? 'yes' : 'no', fmtSeconds(s.remaining_ttl_seconds),
				fmtSeconds(s.ttl_seconds), fmtSeconds(s.expires_in_seconds), fmtBytes(s.size_bytes),
				s.stored_at ? fmtTime(Date.parse(s.stored_at)) : '–', (s.tags || []).join(', ')]);
		}
	}
	fillTable('entry-layers', rows);
}

async function lookupEntry() {
	const key = $('entry-key').value.trim();
	if (!key) return;
	try {
		showEntry(await call('GET', 'cache/entry?key=' + encodeURIComponent(key)));
		setOutput('entry-result', true, `${key}:`);
	} catch (e) {
		fillTable('entry-layers', []);
		setOutput('entry-result', false, 'lookup failed: ' + e.message);
	}
}

$('entry-form').addEventListener('submit', (ev) => { ev.preventDefault(); lookupEntry(); });
$('entry-set-ttl').addEventListener('click', async () => {
	const key = $('entry-key').value.trim(), ttl = $('entry-ttl').value.trim();
	if (!key || !ttl) { setOutput('entry-result', false, 'give a key and a TTL such as 30s'); return; }
	try {
		showEntry(await call('POST', 'cache/entry', { key, ttl }));
		setOutput('entry-result', true, `${key} is fresh for ${ttl} from now`);
	} catch (e) {
		setOutput('entry-result', false, 'set TTL failed: ' + e.message);
	}
});

setText('refresh-every', (refreshMs / 1000) + ' s');
refresh();
