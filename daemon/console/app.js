// lacave console. Plain JavaScript, no framework and no build step: it is embedded in the
// daemon and served as is. It reads and changes the registry through /api/v1 (the session
// cookie authenticates; state-changing requests carry the session's CSRF token) and follows
// it live through the Server-Sent Events of /api/v1/events. Every value shown is put in the
// page as text (textContent), never as HTML.
'use strict';

const STATES = ['discovered', 'registered', 'installing', 'installed', 'booted', 'joining', 'joined', 'ready', 'notready', 'failed'];
const ARCH = { 0: 'BIOS', 6: 'UEFI ia32', 7: 'UEFI x64', 9: 'UEFI x64', 10: 'UEFI arm32', 11: 'UEFI arm64', 16: 'UEFI HTTP x64', 19: 'UEFI HTTP arm64' };
const LOG_MAX = 200;

// Everything the page knows; `window.lacave` lets the browser tests read what arrived live.
const S = {
  csrf: null,
  nodes: new Map(),        // MAC -> node, as GET /api/v1/nodes shows it
  seq: 0,                  // the last event number applied
  received: [],            // event numbers received on the stream, in order
  duplicates: 0,           // events received twice (the stream promises none)
  resets: 0,
  opens: 0,
  log: [],                 // the latest events, newest first
  sort: { key: 'hostname', desc: false },
  filter: '',
  stateFilter: '',
  route: null,
  clusterEnabled: false,
  readyAt: null,
  nodeEvents: null,        // the history of the node whose page is open
  es: null,
  statusTimer: null,
  renderQueued: false,
  ready: false,
  cspViolations: 0,        // what the Content-Security-Policy blocked (the tests expect none)
};
window.lacave = S;
document.addEventListener('securitypolicyviolation', () => { S.cspViolations += 1; });

// ---------- small helpers ----------

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

function ago(iso) {
  if (!iso) return '';
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return Math.floor(s) + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min';
  if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  return Math.floor(s / 86400) + ' d';
}

function dur(ms) {
  const s = ms / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + Math.round((s % 3600) / 60) + ' min';
}

function clock(iso) {
  const d = new Date(iso);
  return d.toLocaleString(undefined, { hour12: false });
}

function badge(state) {
  return h('span', { class: 'badge ' + state, dataset: { state } }, state);
}

function name(n) { return n.hostname || n.mac; }

function toast(text) {
  const t = document.getElementById('toast');
  t.textContent = text;
  t.className = 'show';
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ''; }, 3500);
}

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || ('HTTP ' + status));
    this.status = status;
    this.problem = problem || {};
  }
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD') headers['X-Lacave-Csrf'] = S.csrf;
  const r = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401) { location.href = '/console/login'; throw new ApiError(401, null); }
  const type = r.headers.get('Content-Type') || '';
  if (!r.ok) {
    throw new ApiError(r.status, type.includes('json') ? await r.json() : { detail: await r.text() });
  }
  if (r.status === 204) return { response: r, body: null };
  return { response: r, body: type.includes('json') ? await r.json() : await r.text() };
}

// ---------- the registry, live ----------

async function loadNodes() {
  const { response, body } = await api('GET', '/api/v1/nodes');
  // Everything up to this event number is in the list: the stream resumes after it.
  const seq = Number(response.headers.get('Lacave-Event-Seq') || 0);
  S.nodes = new Map(body.map((n) => [n.mac, n]));
  if (!S.ready) S.seq = seq;
  queueRender();
}

function connect() {
  if (S.es) S.es.close();
  // After the first message the browser resumes by itself with Last-Event-ID.
  const es = new EventSource('/api/v1/events?after=' + S.seq);
  S.es = es;
  es.addEventListener('open', () => {
    S.opens += 1;
    setLive(true);
    // A reconnect (the daemon restarted): removals while away are not replayed, the list shows them.
    if (S.opens > 1) loadNodes().catch(() => {});
  });
  es.addEventListener('node', (e) => applyMessage(JSON.parse(e.data)));
  es.addEventListener('reset', (e) => {
    S.resets += 1;
    S.seq = JSON.parse(e.data).head;
    loadNodes().catch(() => {});
  });
  es.addEventListener('error', () => {
    setLive(false);
    if (es.readyState === EventSource.CLOSED) {
      // Refused (a 401 once the session ended) or gone: check, then start again.
      setTimeout(async () => {
        try { await api('GET', '/console/session'); connect(); } catch (_) { /* api() went to the login page */ }
      }, 2000);
    }
  });
}

function setLive(on) {
  const el = document.getElementById('live');
  el.className = 'live ' + (on ? 'on' : 'off');
  el.textContent = on ? 'live' : 'reconnecting…';
}

function applyMessage(m) {
  if (m.seq <= S.seq) { S.duplicates += 1; return; }
  S.seq = m.seq;
  S.received.push(m.seq);
  if (m.removed) S.nodes.delete(m.mac);
  else if (m.node) S.nodes.set(m.mac, m.node);
  S.log.unshift(m);
  if (S.log.length > LOG_MAX) S.log.pop();
  if (S.route && S.route.view === 'node' && S.nodeEvents && m.event &&
      (m.mac === S.route.id || m.hostname === S.route.id)) {
    S.nodeEvents.push(m.event);
  }
  S.flash = m.mac;
  queueRender();
}

function queueRender() {
  if (S.renderQueued) return;
  S.renderQueued = true;
  requestAnimationFrame(() => { S.renderQueued = false; render(); });
}

// ---------- routing ----------

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  if (parts[0] === 'node' && parts[1]) return { view: 'node', id: decodeURIComponent(parts[1]) };
  if (parts[0] === 'services') return { view: 'services' };
  return { view: 'nodes' };
}

function onRoute() {
  S.route = parseRoute();
  S.nodeEvents = null;
  clearInterval(S.statusTimer);
  document.getElementById('nav-nodes').className = S.route.view !== 'services' ? 'active' : '';
  document.getElementById('nav-services').className = S.route.view === 'services' ? 'active' : '';
  const main = document.getElementById('main');
  main.replaceChildren();
  if (S.route.view === 'nodes') buildNodesView(main);
  else if (S.route.view === 'node') buildNodeView(main, S.route.id);
  else buildServicesView(main);
  render();
}

function render() {
  if (!S.route) return;
  if (S.route.view === 'nodes') renderNodes();
  else if (S.route.view === 'node') renderNode();
}

// ---------- nodes ----------

const COLUMNS = [
  ['hostname', 'Hostname'], ['mac', 'MAC'], ['ip', 'IP'], ['role', 'Role'], ['labels', 'Labels'],
  ['state', 'State'], ['last_seen', 'Last DHCP'], ['state_since', 'In state for'],
];

function buildNodesView(main) {
  const search = h('input', { type: 'search', id: 'filter', placeholder: 'Filter: hostname, MAC, IP, role, label…', value: S.filter, class: 'grow',
    oninput: (e) => { S.filter = e.target.value.toLowerCase(); renderNodes(); } });
  const stateSelect = h('select', { id: 'state-filter', onchange: (e) => { S.stateFilter = e.target.value; renderNodes(); } },
    h('option', { value: '' }, 'every state'), STATES.map((s) => h('option', { value: s, selected: S.stateFilter === s }, s)));
  const head = h('tr', {}, COLUMNS.map(([key, label]) => h('th', { dataset: { key }, onclick: () => {
    S.sort = { key, desc: S.sort.key === key ? !S.sort.desc : false }; renderNodes();
  } }, label)));
  main.append(
    h('div', { class: 'layout' },
      h('section', {},
        h('div', { class: 'toolbar' }, h('h1', {}, 'Nodes'), h('span', { class: 'grow' }),
          h('button', { id: 'register', onclick: () => nodeForm(null) }, 'Register a node')),
        h('div', { class: 'counts', id: 'counts' }),
        h('div', { class: 'toolbar' }, search, stateSelect),
        h('div', { class: 'table-wrap' }, h('table', { id: 'nodes' }, h('thead', {}, head), h('tbody', {}))),
        h('p', { class: 'muted', id: 'nodes-empty' }),
        h('h2', {}, 'Discovered machines, waiting for adoption'),
        h('div', { class: 'table-wrap' }, h('table', { id: 'discovered' },
          h('thead', {}, h('tr', {}, ['MAC', 'Firmware', 'Vendor class', 'Last seen', 'First seen', ''].map((t) => h('th', {}, t)))),
          h('tbody', {}))),
        h('p', { class: 'muted', id: 'discovered-empty' })),
      h('aside', { class: 'panel' }, h('h2', {}, 'Live events'), h('ul', { class: 'events', id: 'log' }))));
}

function sortValue(n, key) {
  switch (key) {
    case 'labels': return Object.entries(n.labels || {}).map(([k, v]) => k + '=' + v).join(',');
    case 'state': return STATES.indexOf(n.state);
    case 'last_seen': return n.last_seen ? n.last_seen.at : '';
    case 'ip': return n.ip ? n.ip.split('.').map((x) => x.padStart(3, '0')).join('.') : '';
    default: return n[key] || '';
  }
}

function matches(n) {
  if (S.stateFilter && n.state !== S.stateFilter) return false;
  if (!S.filter) return true;
  const hay = [n.hostname, n.mac, n.ip, n.role, n.state, ...Object.entries(n.labels || {}).map(([k, v]) => k + '=' + v)]
    .filter(Boolean).join(' ').toLowerCase();
  return S.filter.split(/\s+/).every((w) => hay.includes(w));
}

function renderNodes() {
  const table = document.getElementById('nodes');
  if (!table) return;
  const all = [...S.nodes.values()];
  const registered = all.filter((n) => n.state !== 'discovered');
  const counts = {};
  for (const n of all) counts[n.state] = (counts[n.state] || 0) + 1;
  document.getElementById('counts').replaceChildren(...[
    h('span', { class: 'chip' + (S.stateFilter === '' ? ' active' : ''), onclick: () => { S.stateFilter = ''; document.getElementById('state-filter').value = ''; renderNodes(); } }, registered.length + ' nodes'),
    STATES.filter((s) => counts[s]).map((s) => h('span', { class: 'chip' + (S.stateFilter === s ? ' active' : ''), dataset: { state: s },
      onclick: () => { S.stateFilter = s; document.getElementById('state-filter').value = s; renderNodes(); } }, badge(s), ' ', counts[s]))].flat());
  for (const th of table.querySelectorAll('th')) {
    th.className = th.dataset.key === S.sort.key ? 'sorted' + (S.sort.desc ? ' desc' : '') : '';
  }
  const shown = registered.filter(matches);
  const { key, desc } = S.sort;
  shown.sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    const c = x < y ? -1 : x > y ? 1 : 0;
    return desc ? -c : c;
  });
  const frag = document.createDocumentFragment();
  for (const n of shown) {
    const href = '#/node/' + encodeURIComponent(n.mac);
    frag.append(h('tr', { dataset: { mac: n.mac, hostname: n.hostname || '' }, class: S.flash === n.mac ? 'flash' : null },
      h('td', {}, h('a', { href }, n.hostname || '—')),
      h('td', { class: 'mono' }, n.mac),
      h('td', { class: 'mono' }, n.ip || ''),
      h('td', {}, n.role || ''),
      h('td', {}, Object.entries(n.labels || {}).map(([k, v]) => h('span', { class: 'label' }, k + '=' + v))),
      h('td', { class: 'state' }, badge(n.state), n.failure ? h('div', { class: 'error' }, n.failure.phase + ': ' + n.failure.reason) : null),
      h('td', {}, n.last_seen ? [ago(n.last_seen.at) + ' ago', n.last_seen.arch !== null && n.last_seen.arch !== undefined ? ' · ' + (ARCH[n.last_seen.arch] || 'arch ' + n.last_seen.arch) : ''] : h('span', { class: 'muted' }, 'never')),
      h('td', {}, ago(n.state_since))));
  }
  table.tBodies[0].replaceChildren(frag);
  document.getElementById('nodes-empty').textContent = shown.length ? '' :
    (registered.length ? 'No node matches the filter.' : 'No node yet: register one with its MAC address, or power a machine on and adopt it below.');

  const discovered = all.filter((n) => n.state === 'discovered').sort((a, b) => sortValue(b, 'last_seen') < sortValue(a, 'last_seen') ? -1 : 1);
  const dfrag = document.createDocumentFragment();
  for (const n of discovered) {
    const s = n.last_seen || {};
    dfrag.append(h('tr', { dataset: { mac: n.mac } },
      h('td', { class: 'mono' }, h('a', { href: '#/node/' + encodeURIComponent(n.mac) }, n.mac)),
      h('td', {}, s.arch !== null && s.arch !== undefined ? (ARCH[s.arch] || 'arch ' + s.arch) : ''),
      h('td', { class: 'mono' }, s.vendor_class || ''),
      h('td', {}, s.at ? ago(s.at) + ' ago' : ''),
      h('td', {}, ago(n.created_at) + ' ago'),
      h('td', {}, h('button', { class: 'quiet adopt', onclick: () => nodeForm(null, n.mac) }, 'Adopt'))));
  }
  document.getElementById('discovered').tBodies[0].replaceChildren(dfrag);
  document.getElementById('discovered-empty').textContent = discovered.length ? '' : 'None: every machine seen on the network is registered.';
  renderLog();
  S.flash = null;
}

function describe(e) {
  if (!e) return 'removed';
  switch (e.kind) {
    case 'transition': return e.from + ' → ' + e.to + (e.message ? ' (' + e.message + ')' : '');
    case 'created': return 'created as ' + e.to + (e.message ? ' (' + e.message + ')' : '');
    case 'lease': return 'DHCP ' + e.action + ' ' + e.ip;
    case 'step': return e.phase + ': ' + e.command + (e.status !== undefined ? ' → exit ' + e.status : ' (did not finish)');
    case 'refused': return 'refused a request from ' + e.ip + (e.message ? ': ' + e.message : '');
    default: return e.message || e.kind;
  }
}

function renderLog() {
  const ul = document.getElementById('log');
  if (!ul) return;
  if (!S.log.length) { ul.replaceChildren(h('li', { class: 'muted' }, 'Events appear here as they happen.')); return; }
  ul.replaceChildren(...S.log.slice(0, 60).map((m) => h('li', { dataset: { seq: m.seq } },
    h('span', { class: 'when' }, new Date(m.event ? m.event.at : Date.now()).toLocaleTimeString(undefined, { hour12: false })),
    h('a', { class: 'who', href: '#/node/' + encodeURIComponent(m.mac) }, m.hostname || m.mac),
    describe(m.event))));
}

// ---------- forms and dialogs ----------

function dialog(build) {
  const d = document.getElementById('dialog');
  d.replaceChildren();
  build(d);
  d.showModal();
  return d;
}

function confirmDialog(title, text, action, danger) {
  return new Promise((resolve) => {
    const d = dialog((d) => d.append(
      h('h2', {}, title), h('p', {}, text),
      h('div', { class: 'buttons' },
        h('button', { class: 'quiet', id: 'confirm-cancel', onclick: () => { d.close(); resolve(false); } }, 'Cancel'),
        h('button', { class: danger ? 'danger' : '', id: 'confirm-ok', onclick: () => { d.close(); resolve(true); } }, action))));
    d.addEventListener('cancel', () => resolve(false), { once: true });
  });
}

function parseLabels(text) {
  const labels = {};
  for (const part of text.split(/[,\n]/).map((s) => s.trim()).filter(Boolean)) {
    const i = part.indexOf('=');
    if (i < 0) throw new Error('labels: "' + part + '" is not key=value');
    labels[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return labels;
}

function showProblem(form, err) {
  for (const el of form.querySelectorAll('.field-error')) el.remove();
  const general = form.querySelector('.form-error');
  general.textContent = '';
  const p = err.problem || {};
  const fieldErrors = (p.errors || []).slice();
  if (p.field) fieldErrors.push({ field: p.field, reason: p.detail });
  let placed = 0;
  for (const fe of fieldErrors) {
    const input = form.querySelector('[name="' + CSS.escape(fe.field) + '"]');
    if (input) {
      input.insertAdjacentElement('afterend', h('div', { class: 'field-error', dataset: { field: fe.field } }, fe.reason));
      placed += 1;
    }
  }
  if (placed < fieldErrors.length || !fieldErrors.length) general.textContent = err.message;
}

// Registers a node (node = null), adopts a discovered MAC, or edits a registered node.
function nodeForm(node, adoptMac) {
  const editing = !!node;
  const v = node || { mac: adoptMac || '', hostname: '', ip: '', role: 'worker', labels: {} };
  const labelsText = Object.entries(v.labels || {}).map(([k, x]) => k + '=' + x).join(', ');
  dialog((d) => {
    const form = h('form', { class: 'grid', id: 'node-form', novalidate: true },
      h('label', { for: 'f-mac' }, 'MAC'), h('input', { id: 'f-mac', name: 'mac', value: v.mac, readonly: editing || !!adoptMac, placeholder: '52:54:00:12:34:56' }),
      h('label', { for: 'f-hostname' }, 'Hostname'), h('input', { id: 'f-hostname', name: 'hostname', value: v.hostname || '', placeholder: 'kube04' }),
      h('label', { for: 'f-ip' }, 'IP'), h('input', { id: 'f-ip', name: 'ip', value: v.ip || '', placeholder: '192.168.1.24' }),
      h('label', { for: 'f-role' }, 'Role'), h('select', { id: 'f-role', name: 'role' },
        ['worker', 'control-plane'].map((r) => h('option', { value: r, selected: v.role === r }, r))),
      h('label', { for: 'f-labels' }, 'Labels'), h('input', { id: 'f-labels', name: 'labels', value: labelsText, placeholder: 'zone=rack1, disk=ssd' }),
      h('label', { for: 'f-disk' }, 'Install disk'), h('input', { id: 'f-disk', name: 'install_disk', value: node && node.install_disk ? node.install_disk : '', placeholder: 'the default (/dev/sda)' }),
      h('p', { class: 'form-error full', role: 'alert' }),
      h('div', { class: 'buttons full' },
        h('button', { type: 'button', class: 'quiet', onclick: () => d.close() }, 'Cancel'),
        h('button', { type: 'submit', id: 'f-submit' }, editing ? 'Save' : (adoptMac ? 'Adopt' : 'Register'))));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const f = Object.fromEntries(new FormData(form).entries());
      let body;
      try {
        body = { hostname: f.hostname.trim(), ip: f.ip.trim(), role: f.role, labels: parseLabels(f.labels) };
      } catch (err) {
        showProblem(form, { message: err.message, problem: { errors: [{ field: 'labels', reason: err.message }] } });
        return;
      }
      const disk = f.install_disk.trim();
      try {
        if (editing) {
          const patch = {};
          for (const k of ['hostname', 'ip', 'role']) if (body[k] !== (node[k] || '')) patch[k] = body[k];
          if (JSON.stringify(body.labels) !== JSON.stringify(node.labels || {})) patch.labels = body.labels;
          if (disk !== (node.install_disk || '')) patch.install_disk = disk || null;
          if (!Object.keys(patch).length) { d.close(); return; }
          await api('PATCH', '/api/v1/nodes/' + encodeURIComponent(node.mac), patch);
          toast('Saved ' + name(node));
        } else {
          body.mac = f.mac.trim();
          if (disk) body.install_disk = disk;
          const { body: created } = await api('POST', '/api/v1/nodes', body);
          toast((adoptMac ? 'Adopted ' : 'Registered ') + created.hostname);
        }
        d.close();
      } catch (err) {
        showProblem(form, err);
      }
    });
    d.append(h('h2', {}, editing ? 'Edit ' + name(node) : adoptMac ? 'Adopt ' + adoptMac : 'Register a node'), form);
  });
}

async function action(n, what) {
  const who = name(n);
  const texts = {
    reinstall: ['Reinstall ' + who + '?', 'Its next network boot installs Flatcar again and erases ' + (n.install_disk || 'its disk') + '. Its callback secret and pinned SSH host key are forgotten now.', 'Reinstall', true],
    rejoin: ['Rejoin ' + who + '?', 'The daemon runs kubeadm reset on it and joins it to the cluster again.', 'Rejoin', true],
    remove: ['Remove ' + who + '?', 'It leaves the registry (and the cluster first: cordon, drain, Node deleted). Its history goes with it.', 'Remove', true],
  };
  const [title, text, label, danger] = texts[what];
  if (!await confirmDialog(title, text, label, danger)) return;
  try {
    if (what === 'remove') {
      await api('DELETE', '/api/v1/nodes/' + encodeURIComponent(n.mac));
      toast('Removed ' + who);
      location.hash = '#/nodes';
    } else if (what === 'reinstall' && S.bmc && S.bmc.mac === n.mac && S.bmc.url) {
      // With a BMC the reinstall happens now: next boot from the network, power cycle.
      await api('POST', '/api/v1/nodes/' + encodeURIComponent(n.mac) + '/reinstall?power=true');
      toast('Reinstalling ' + who + ' now (network boot, power cycle)');
    } else {
      await api('POST', '/api/v1/nodes/' + encodeURIComponent(n.mac) + '/' + what);
      toast(label + ' requested for ' + who);
    }
  } catch (err) {
    toast(err.message);
  }
}

// ---------- a node's page ----------

function findNode(id) {
  if (S.nodes.has(id)) return S.nodes.get(id);
  for (const n of S.nodes.values()) if (n.hostname === id) return n;
  return null;
}

function buildNodeView(main, id) {
  main.append(h('div', { id: 'node-page' }, h('p', { class: 'muted' }, 'Loading…')));
  api('GET', '/api/v1/nodes/' + encodeURIComponent(id) + '/events').then(({ body }) => {
    if (!S.route || S.route.id !== id) return;
    S.nodeEvents = body;
    renderNode(true);
  }).catch((err) => {
    document.getElementById('node-page').replaceChildren(h('p', { class: 'error' }, err.message), h('a', { href: '#/nodes' }, '← all nodes'));
  });
}

// The last provisioning: from the last registration (or reinstall) to now.
function timeline(events, node) {
  let start = 0;
  events.forEach((e, i) => {
    if ((e.kind === 'created' && e.to === 'registered') || (e.kind === 'transition' && e.to === 'registered')) start = i;
  });
  const cycle = events.slice(start);
  const at = (pred) => { const e = cycle.find(pred); return e ? Date.parse(e.at) : null; };
  const reached = (state) => at((e) => e.kind === 'transition' && e.to === state);
  const registeredAt = cycle.length ? Date.parse(cycle[0].at) : null;
  const dhcp = at((e) => e.kind === 'lease' && e.action === 'bound');
  const points = [
    ['power-on → DHCP', dhcp, 'first DHCP lease'],
    ['script', reached('installing'), 'iPXE script served, install starts'],
    ['installed', reached('installed'), 'Flatcar on disk'],
    ['booted', reached('booted'), 'installed system up'],
  ];
  // Without [cluster] enabled, `booted` is where the daemon's work ends.
  if (S.clusterEnabled) points.push(['joined', reached('joined'), 'kubeadm join done'], ['ready', reached('ready'), 'Node Ready']);
  const finished = S.clusterEnabled ? ['ready', 'notready'] : ['booted', 'joining', 'joined', 'ready', 'notready'];
  const failedAt = node && node.state === 'failed' ? Date.parse(node.state_since) : null;
  let prev = dhcp || registeredAt;
  let lastDone = -1;
  points.forEach((p, i) => { if (p[1]) lastDone = i; });
  const phases = points.map(([label, t, what], i) => {
    let cls = 'phase', d = '';
    if (t && i <= lastDone) {
      cls += ' done';
      d = i === 0 ? 'start' : dur(t - prev);
      prev = t;
    } else if (i === lastDone + 1) {
      if (failedAt) { cls += ' failed'; d = 'failed after ' + dur(failedAt - prev); }
      else if (prev && !finished.includes(node && node.state)) { cls += ' current'; d = dur(Date.now() - prev) + ' so far'; }
    }
    return h('div', { class: cls, dataset: { phase: label } },
      h('div', { class: 'name' }, label), h('div', { class: 'dur' }, d || '—'),
      h('div', { class: 'at' }, t ? clock(new Date(t).toISOString()) : what));
  });
  const first = dhcp || registeredAt;
  const last = lastDone >= 0 ? points[lastDone][1] : null;
  return [h('div', { class: 'timeline', id: 'timeline' }, phases),
    first && last && lastDone > 0 ? h('p', { class: 'muted', id: 'timeline-total' }, 'DHCP to ' + points[lastDone][0] + ': ' + dur(last - first)) : null];
}

function renderNode(full) {
  const page = document.getElementById('node-page');
  if (!page || !S.nodeEvents) return;
  const n = findNode(S.route.id);
  if (!n) {
    page.replaceChildren(h('p', {}, 'This node is no longer in the registry.'), h('a', { href: '#/nodes' }, '← all nodes'));
    return;
  }
  const registered = n.state !== 'discovered';
  const facts = [
    ['MAC', n.mac], ['IP', n.ip || '—'], ['Role', n.role || '—'],
    ['Labels', Object.entries(n.labels || {}).map(([k, v]) => k + '=' + v).join(', ') || '—'],
    ['Install disk', n.install_disk], ['Boot file', n.boot_file || 'by firmware'],
    ['Last DHCP', n.last_seen ? clock(n.last_seen.at) + (n.last_seen.arch !== null && n.last_seen.arch !== undefined ? ' · ' + (ARCH[n.last_seen.arch] || 'arch ' + n.last_seen.arch) : '') + (n.last_seen.vendor_class ? ' · ' + n.last_seen.vendor_class : '') : 'never'],
    ['SSH host key', n.ssh_host_key || '—'],
    ['Registered', clock(n.created_at)], ['In state since', clock(n.state_since) + ' (' + ago(n.state_since) + ')'],
  ];
  const history = S.nodeEvents.slice().reverse().map((e) => h('tr', { dataset: { seq: e.seq, kind: e.kind } },
    h('td', { class: 'mono' }, clock(e.at)),
    h('td', {}, e.kind),
    h('td', {}, describe(e), e.kind === 'step' && e.message ? h('pre', { class: 'output' }, e.message) : null,
      e.kind === 'transition' && e.to === 'failed' && e.message ? h('div', { class: 'error' }, e.message) : null)));
  const actions = h('div', { class: 'actions' },
    registered ? h('button', { id: 'edit', onclick: () => nodeForm(n) }, 'Edit') : h('button', { id: 'adopt', onclick: () => nodeForm(null, n.mac) }, 'Adopt'),
    registered ? h('button', { id: 'reinstall', class: 'quiet', onclick: () => action(n, 'reinstall') }, 'Reinstall') : null,
    registered ? h('button', { id: 'rejoin', class: 'quiet', onclick: () => action(n, 'rejoin') }, 'Rejoin') : null,
    h('button', { id: 'remove', class: 'danger', onclick: () => action(n, 'remove') }, 'Remove'));
  const parts = [
    h('p', {}, h('a', { href: '#/nodes' }, '← all nodes')),
    h('h1', {}, name(n), ' ', h('span', { id: 'node-state' }, badge(n.state))),
    n.failure ? h('p', { class: 'error', id: 'failure' }, 'Failed in ' + n.failure.phase + ': ' + n.failure.reason) : null,
    actions,
    h('div', { class: 'panel' }, h('dl', { class: 'facts' }, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))),
    h('h2', {}, 'Last provisioning'), timeline(S.nodeEvents, n),
    h('h2', {}, 'History'),
    h('div', { class: 'table-wrap' }, h('table', { id: 'history' }, h('thead', {}, h('tr', {}, h('th', {}, 'When'), h('th', {}, 'Kind'), h('th', {}, 'What'))), h('tbody', {}, history))),
  ];
  // The power panel and the rendered configs are kept across live updates (fetched on demand).
  let power = page.querySelector('#power');
  if (registered && (full || !power)) power = buildPower(n);
  if (registered) parts.push(h('h2', {}, 'Power'), power);
  let configs = page.querySelector('#configs');
  if (registered && (full || !configs)) configs = buildConfigs(n);
  if (registered) parts.push(h('h2', {}, 'Rendered configs (secrets redacted)'), configs);
  page.replaceChildren(...parts.flat().filter(Boolean));
}

// A node's BMC: its address and last state, the power actions, or a form to set one.
function buildPower(n) {
  const box = h('div', { id: 'power', class: 'panel' }, h('p', { class: 'muted' }, 'Loading…'));
  const base = '/api/v1/nodes/' + encodeURIComponent(n.mac);
  const show = async () => {
    let bmc = null;
    try {
      bmc = (await api('GET', base + '/bmc')).body;
    } catch (err) {
      if (err.problem.code !== 'no_bmc') { box.replaceChildren(h('p', { class: 'error' }, err.message)); return; }
    }
    S.bmc = { mac: n.mac, url: bmc && bmc.url };
    if (!bmc) { box.replaceChildren(...bmcForm(n, show)); return; }
    const state = h('span', { id: 'power-state', class: 'mono' }, bmc.last && bmc.last.state ? bmc.last.state : 'unknown');
    const out = h('p', { id: 'power-result', class: 'muted' }, bmc.last && bmc.last.error ? bmc.last.error : '');
    const run = async (action, confirmText) => {
      if (confirmText && !await confirmDialog('Power ' + action + ' ' + name(n) + '?', confirmText, 'Power ' + action, true)) return;
      out.textContent = 'Asking the BMC…';
      try {
        if (action === 'status') {
          const { body } = await api('GET', base + '/power');
          state.textContent = body.state || 'unknown';
          out.textContent = 'Checked ' + clock(body.checked_at);
        } else {
          const { body } = await api('POST', base + '/power', { action });
          state.textContent = body.state;
          out.textContent = action + ': done';
          toast(name(n) + ': ' + action + ' done');
        }
      } catch (err) { out.textContent = err.message; out.className = 'error'; }
    };
    box.replaceChildren(
      h('dl', { class: 'facts' }, h('dt', {}, 'BMC'), h('dd', { id: 'bmc-url', class: 'mono' }, bmc.url),
        h('dt', {}, 'User'), h('dd', {}, bmc.user), h('dt', {}, 'Power'), h('dd', {}, state)),
      h('div', { class: 'actions' },
        h('button', { id: 'power-status', class: 'quiet', onclick: () => run('status') }, 'Ask'),
        h('button', { id: 'power-on', onclick: () => run('on') }, 'Power on'),
        h('button', { id: 'power-cycle', class: 'quiet', onclick: () => run('cycle', 'The machine is switched off and on again at once: whatever runs on it stops.') }, 'Cycle'),
        h('button', { id: 'power-pxe', class: 'quiet', onclick: () => run('pxe-once') }, 'Network boot next'),
        h('button', { id: 'power-off', class: 'danger', onclick: () => run('off', 'The machine is switched off at once, without a shutdown.') }, 'Power off')),
      out);
  };
  show();
  return box;
}

function bmcForm(n, done) {
  const form = h('form', { id: 'bmc-form' },
    h('label', {}, 'BMC URL', h('input', { name: 'url', placeholder: 'ipmi://10.0.0.101 or redfish://bmc?sha256=…', required: true })),
    h('label', {}, 'User', h('input', { name: 'user', autocomplete: 'off', required: true })),
    h('label', {}, 'Password', h('input', { name: 'password', type: 'password', autocomplete: 'new-password', required: true })),
    h('p', { class: 'form-error error' }),
    h('button', { type: 'submit' }, 'Set BMC'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const f = Object.fromEntries(new FormData(form));
    try {
      await api('PUT', '/api/v1/nodes/' + encodeURIComponent(n.mac) + '/bmc', { url: f.url.trim(), user: f.user, password: f.password });
      toast('BMC set for ' + name(n));
      done();
    } catch (err) { showProblem(form, err); }
  });
  return [h('p', { class: 'muted' }, 'No BMC: power this machine by hand, or give it its BMC.'), form];
}

function buildConfigs(n) {
  const pre = h('pre', { class: 'config', id: 'config-text' }, 'Choose one.');
  const tabs = h('div', { class: 'tabs' });
  const show = async (what, button) => {
    for (const b of tabs.children) b.setAttribute('aria-selected', String(b === button));
    pre.textContent = 'Rendering…';
    try {
      const { body } = await api('GET', '/api/v1/nodes/' + encodeURIComponent(n.mac) + '/render/' + what);
      pre.textContent = typeof body === 'string' ? body : JSON.stringify(body, null, 2);
    } catch (err) { pre.textContent = err.message; }
  };
  for (const [what, label] of [['ipxe', 'iPXE script'], ['install', 'install Ignition'], ['final', 'final Ignition']]) {
    const b = h('button', { id: 'config-' + what, 'aria-selected': 'false', onclick: () => show(what, b) }, label);
    tabs.append(b);
  }
  return h('div', { id: 'configs' }, tabs, pre);
}

// ---------- services ----------

function buildServicesView(main) {
  main.append(h('h1', {}, 'Services'), h('div', { id: 'services' }, h('p', { class: 'muted' }, 'Loading…')));
  const refresh = () => loadServices().catch((err) => {
    const el = document.getElementById('services');
    if (el) el.replaceChildren(h('p', { class: 'error' }, err.message));
  });
  refresh();
  S.statusTimer = setInterval(refresh, 5000);
}

function counterTable(counters) {
  const rows = Object.entries(counters || {});
  if (!rows.length) return h('p', { class: 'muted' }, 'nothing counted yet');
  return h('table', {}, h('tbody', {}, rows.map(([k, v]) => h('tr', {}, h('td', {}, k), h('td', { class: 'mono' }, v)))));
}

async function loadServices() {
  const { body: st } = await api('GET', '/api/v1/status');
  const cards = st.services.map((s) => h('div', { class: 'panel card', dataset: { service: s.name } },
    h('h3', {}, s.name, ' ', s.enabled ? h('span', { class: 'badge ready' }, 'on') : h('span', { class: 'badge registered' }, 'off')),
    h('div', { class: 'detail' }, s.detail), counterTable(s.counters)));
  const days = Math.floor((Date.parse(st.ca.not_after) - Date.now()) / 86400000);
  cards.push(h('div', { class: 'panel card', id: 'ca' },
    h('h3', {}, 'cluster CA'),
    h('div', { class: 'detail' }, st.ca.subject),
    h('dl', { class: 'facts' },
      h('dt', {}, 'SHA-256'), h('dd', { class: 'mono', id: 'ca-fingerprint' }, st.ca.fingerprint_sha256),
      h('dt', {}, 'Expires'), h('dd', { class: days < 60 ? 'error' : '' }, clock(st.ca.not_after) + ' (in ' + days + ' days)'))));
  cards.push(h('div', { class: 'panel card', id: 'registry' },
    h('h3', {}, 'registry'),
    h('div', { class: 'detail' }, st.registry.writable ? 'writable' : 'WRITES FAILING: ' + st.registry.failure),
    counterTable(st.registry.nodes),
    h('div', { class: 'detail' }, 'lacave ' + st.version + ', up ' + ago(st.started_at))));
  const parts = [h('div', { class: 'cards' }, cards)];
  parts.push(...await updatesSection());
  if (st.cluster_enabled) {
    try {
      const [{ body: cluster }, { body: addons }] = await Promise.all([api('GET', '/api/v1/cluster'), api('GET', '/api/v1/addons')]);
      parts.push(h('h2', {}, 'Kubernetes cluster ', cluster.name || ''),
        h('p', { class: 'muted' }, (cluster.endpoint || '') + ' · Kubernetes ' + (cluster.server_version || cluster.joins_at || cluster.kubernetes_version || '') + ' · new nodes join at ' + (cluster.joins_at || cluster.kubernetes_version || '') + (cluster.initialized_by ? ' · initialized by ' + cluster.initialized_by : ' · not initialized yet')));
      const up = cluster.upgrade;
      if (up && up.state) {
        const badge = up.state === 'done' ? 'ready' : up.state === 'running' ? 'installing' : 'failed';
        parts.push(h('h2', {}, 'Upgrade'),
          h('p', { id: 'upgrade-state' }, (up.from || '?') + ' → ' + up.to + ' ', h('span', { class: 'badge ' + badge }, up.state),
            up.snapshot ? h('span', { class: 'muted' }, ' · etcd snapshot before it: ' + up.snapshot) : ''),
          up.error ? h('p', { class: 'error' }, up.error) : '',
          h('div', { class: 'table-wrap' }, h('table', { id: 'upgrade-nodes' },
            h('thead', {}, h('tr', {}, ['Node', 'Role', 'From', 'kubeadm', 'State', 'Step'].map((t) => h('th', {}, t)))),
            h('tbody', {}, (up.nodes || []).map((n) => h('tr', {},
              h('td', {}, n.hostname), h('td', {}, n.role), h('td', {}, n.from || '-'), h('td', {}, n.kubeadm),
              h('td', {}, n.state), h('td', {}, (n.step || '') + (n.cordoned ? ' (cordoned)' : ''))))))));
      }
      parts.push(h('h2', {}, 'Add-ons'),
        h('div', { class: 'table-wrap' }, h('table', { id: 'addons' },
          h('thead', {}, h('tr', {}, ['Add-on', 'State', 'Objects', 'Message'].map((t) => h('th', {}, t)))),
          h('tbody', {}, (addons || []).map((a) => h('tr', {},
            h('td', {}, a.name), h('td', {}, h('span', { class: 'badge ' + (a.state === 'healthy' ? 'ready' : a.state === 'failed' || a.state === 'conflict' ? 'failed' : 'installing') }, a.state)),
            h('td', {}, a.objects), h('td', {}, a.message)))))));
    } catch (err) {
      parts.push(h('p', { class: 'error' }, 'Cluster: ' + err.message));
    }
  } else {
    parts.push(h('p', { class: 'muted' }, 'The daemon joins no node to Kubernetes ([cluster] enabled = false): no cluster or add-ons to show.'));
  }
  const el = document.getElementById('services');
  if (el) el.replaceChildren(...parts);
}

// Flatcar updates: the release offered, the coordinated reboots (pause or resume them), and
// where each node is, as GET /api/v1/updates shows it.
async function updatesSection() {
  try {
    const { body: up } = await api('GET', '/api/v1/updates');
    const r = up.reboots;
    const held = r && (r.paused || r.stopped);
    const rollout = !r ? '' : r.stopped ? 'stopped: ' + r.stopped : r.paused ? 'paused'
      : up.coordinate_reboots ? 'on, ' + (up.window ? up.window + ' (UTC)' : 'any time') + ', ' + up.max_unavailable + ' worker(s) at a time' : 'off';
    const running = r ? r.running.map((x) => x.hostname + ' → ' + x.to + ' (' + x.step + ')').join(', ') : '';
    return [h('h2', {}, 'Flatcar updates'),
      h('p', { id: 'updates-state' },
        up.enabled ? (up.target ? 'offered: Flatcar ' + up.target + ' (group ' + up.group + ')' : 'no release offered: ' + (up.target_error || '')) : 'not served ([updates] enabled = false)',
        r ? h('span', { class: r.stopped ? 'error' : 'muted' }, ' · coordinated reboots: ' + rollout) : '',
        running ? h('span', { class: 'muted' }, ' · rebooting ' + running) : ''),
      (up.groups || []).length ? h('p', { id: 'updates-groups', class: 'muted' }, 'other groups: ' + up.groups.map((g) => g.group + ' → ' + (g.target ? 'Flatcar ' + g.target : 'none (' + (g.target_error || '') + ')')).join(' · ')) : '',
      r ? h('p', {}, h('button', { id: 'updates-toggle', onclick: async () => {
        await api('POST', '/api/v1/updates/' + (held ? 'resume' : 'pause'));
        loadServices();
      } }, held ? 'Resume reboots' : 'Pause reboots')) : '',
      h('div', { class: 'table-wrap' }, h('table', { id: 'updates-nodes' },
        h('thead', {}, h('tr', {}, ['Node', 'Version', 'Group', 'State', 'Target', 'Last check'].map((t) => h('th', {}, t)))),
        h('tbody', {}, up.nodes.map((n) => h('tr', {},
          h('td', {}, n.node), h('td', { class: 'mono' }, n.version), h('td', {}, n.group),
          h('td', {}, h('span', { class: 'badge ' + (n.state === 'up-to-date' ? 'ready' : n.state === 'failed' || n.state === 'unanswered' ? 'failed' : 'installing') }, n.state), n.error ? ' ' + n.error : ''),
          h('td', { class: 'mono' }, n.target || '-'), h('td', {}, ago(n.checked_at) + ' ago'))))))];
  } catch (err) {
    return [h('p', { class: 'error' }, 'Updates: ' + err.message)];
  }
}

// ---------- start ----------

async function start() {
  document.getElementById('logout').addEventListener('click', async () => {
    try { await api('POST', '/console/logout'); } finally { location.href = '/console/login'; }
  });
  const [{ body: session }, { body: status }] = await Promise.all([api('GET', '/console/session'), api('GET', '/api/v1/status')]);
  S.csrf = session.csrf;
  S.clusterEnabled = status.cluster_enabled;
  await loadNodes();
  S.ready = true;
  window.addEventListener('hashchange', onRoute);
  onRoute();
  connect();
  // "In state for" and "ago" columns move with time.
  setInterval(() => { if (S.route && S.route.view === 'nodes') queueRender(); }, 30000);
  // Once the table with every node is painted and answers clicks (the benchmark reads it):
  // after the next frame.
  requestAnimationFrame(() => setTimeout(() => {
    S.readyAt = performance.now();
    document.body.dataset.ready = 'true';
  }, 0));
}

start().catch((err) => {
  document.getElementById('main').replaceChildren(h('p', { class: 'error' }, 'The console could not start: ' + err.message));
});
