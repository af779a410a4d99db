// The explorer's behaviour, run once when the page is ready; it defines window.ib, which the
// widgets' small callbacks call. Arguments (see build_page): the shown `nodes`/`edges` sources,
// the per-method stores (`stores`, defined just before this code), the widgets, and
// per-method texts and layer names. Bokeh may hand dict arguments to JavaScript as Map or as
// plain objects: get() reads both.
//
// State: the method, the selected node `sel` (focus mode: only its edges, its neighbours
// coloured by their share of its in- or out-weight), the pinned nodes `pins` (path mode, two
// or more: the subgraph of the drawn edges on paths between pins), a hovered node (focus while
// nothing is selected) and search matches. Selection and pins live in the URL hash as
// `#m=<method>&sel=<layer>:<index>&pins=<layer>:<index>,...`; the card's partner rows are links
// `#sel=<layer>:<index>` (method and pins kept).
//
// The module view (`view` active 1, `&v=modules&open=<layer>:m<module>` in the hash) draws the
// method's module stores instead: one node per module per layer, the summed edges between
// them. Clicking one (`open`) lists its members' cards side by side and draws its members
// beside it, each with its page edges summed per neighbouring module.
const get = (o, k) => (o instanceof Map ? o.get(k) : o[k]);
const ib = {method: null, sel: null, pins: [], hover: null, matches: null, busy: false,
  open: null, msel: null};
window.ib = ib;
const RAMP = ['#fee8c8', '#fdbb84', '#fc8d59', '#e34a33', '#b30000'];
const shareColour = (s) => RAMP[Math.min(RAMP.length - 1, Math.floor(Math.sqrt(s) * RAMP.length))];
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => '&#' + c.charCodeAt(0) + ';');

// Cards: each layer's cards are one base64 zlib block in a card file beside the page
// (texts[method].cards[layer] = [path, key, size], see card_files). The first time a card of
// the layer is shown, a <script> tag loads that file (offline, also from file://, where fetch
// is refused), which registers the block in window.ibCardBlocks under its key; the block is
// inflated with the browser's DecompressionStream and kept. A small page (blocks of at most
// `preload_chars` in all) loads every layer right away (ib.cardsReady once done); a large
// one only what is opened. A file that does not load (the page copied without its folder)
// shows a message in the card instead.
const SEPARATOR = '\x1e';
ib.cards = new Map();
ib.cardsReady = false;
const names = (o) => (o instanceof Map ? [...o.keys()] : Object.keys(o));
const registry = () => (window.ibCardBlocks = window.ibCardBlocks || {});
ib.inflate = async (b64) => {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
  return (await new Response(stream).text()).split(SEPARATOR);
};
const folderOf = (path) => path.slice(0, path.lastIndexOf('/') + 1);
ib.loadBlock = (path, key) => new Promise((resolve, reject) => {
  if (key in registry()) { resolve(registry()[key]); return; }
  const tag = document.createElement('script');
  tag.src = path;
  tag.onload = () => {
    if (key in registry()) resolve(registry()[key]);
    else {
      reject(new Error('the file ' + path + ' beside this page belongs to another build of ' +
        "it: copy the page's folder as it was built (index.html with its " + folderOf(path) +
        ' folder), then reload'));
    }
  };
  tag.onerror = () => reject(new Error('the file ' + path + ' was not found beside this ' +
    "page: a page's cards are in the folder " + folderOf(path) + ' next to it. Keep that ' +
    'folder beside the page (copy or send the whole folder the page is in), then reload'));
  document.head.appendChild(tag);
});
ib.layerCards = (m, layer) => {
  const key = m + '|' + layer;
  if (!ib.cards.has(key)) {
    const [path, blockKey] = get(get(get(texts, m), 'cards'), layer);
    ib.cards.set(key, ib.loadBlock(path, blockKey).then((blob) => ib.inflate(blob)).then(
      (list) => {
        delete registry()[blockKey];  // the inflated cards are kept instead
        ib.cards.set(key, list);
        return list;
      },
      (err) => {
        ib.cards.set(key, err);
        throw err;
      }));
  }
  return ib.cards.get(key);
};
const LOADING = '<i>loading this layer\'s cards…</i>';
// The card of a feature-store row, or LOADING (the card is drawn again once loaded), or why
// it cannot be shown.
ib.cardOf = (row) => {
  const d = ib.store()[0].data;
  const got = ib.layerCards(ib.method, d.layer[row]);
  if (Array.isArray(got)) return got[d.index[row]];
  if (got instanceof Error) {
    return "<p class='missing'><b>This card cannot be shown</b>: " + esc(got.message) + '.</p>';
  }
  got.then(() => ib.render(), () => ib.render());
  return LOADING;
};
ib.preload = async () => {
  let total = 0;
  for (const m of methods) {
    const c = get(get(texts, m), 'cards');
    for (const layer of names(c)) total += get(c, layer)[2];
  }
  if (total <= preload_chars) {
    for (const m of methods) {
      for (const layer of names(get(get(texts, m), 'cards'))) {
        // A missing file is said in the card when one of its cards is shown.
        await Promise.resolve(ib.layerCards(m, layer)).catch(() => null);
      }
    }
  }
  ib.cardsReady = true;
};

ib.store = () => stores[ib.method];
ib.rowOf = (key) => (ib.index.has(key) ? ib.index.get(key) : null);
ib.link = (i) => {
  const d = ib.store()[0].data;
  return "<a href='#sel=" + esc(d.key[i]) + "'>" + esc(d.label[i]) + '</a>';
};

ib.switchMethod = (m) => {
  const [nodeStore] = stores[m];
  ib.method = m;
  ib.index = new Map();
  nodeStore.data.key.forEach((k, i) => ib.index.set(k, i));
  ib.sel = null;
  ib.pins = [];
  ib.hover = null;
  ib.matches = null;
  ib.open = null;
  ib.msel = null;
  ib.mindex = new Map();
  stores[m][2].data.key.forEach((k, i) => ib.mindex.set(k, i));
  ib.shown = null;
  ib.fillNodes();
  const t = get(texts, m);
  legend.text = get(t, 'legend');
  headline.text = get(t, 'headline');
  const over = {};
  get(layers, m).forEach((name, i) => { over[i] = name; });
  axis.major_label_overrides = over;
  ib.busy = true;
  method.active = methods.indexOf(m);
  ib.busy = false;
};

ib.massKept = () => {
  const e = ib.store()[1].data;
  const x = mass.value / 100;
  const keep = [];
  for (let i = 0; i < e.before.length; i++) { if (e.before[i] < x) keep.push(i); }
  return keep;
};

// Nodes on a path between pins along the given edges: reachable downstream from a pin and
// upstream from a pin.
ib.between = (keep) => {
  const e = ib.store()[1].data;
  const down = new Map();
  const up = new Map();
  for (const i of keep) {
    if (!down.has(e.src[i])) down.set(e.src[i], []);
    if (!up.has(e.dst[i])) up.set(e.dst[i], []);
    down.get(e.src[i]).push(e.dst[i]);
    up.get(e.dst[i]).push(e.src[i]);
  }
  const reach = (adj) => {
    const seen = new Set(ib.pins);
    const todo = [...ib.pins];
    while (todo.length) {
      for (const n of adj.get(todo.pop()) ?? []) {
        if (!seen.has(n)) { seen.add(n); todo.push(n); }
      }
    }
    return seen;
  };
  const f = reach(down);
  const b = reach(up);
  return new Set([...f].filter((n) => b.has(n)));
};

ib.modules = () => view.active === 1;

// The shown nodes: the feature store, or in the module view the supernodes and the open
// supernode's members (their rows in the feature store: ib.memberRows).
ib.fillNodes = () => {
  const [nodeStore, , mStore] = ib.store();
  const want = ib.modules() ? 'm' + ib.open : 'f';
  if (ib.shown === want) return;
  ib.shown = want;
  const nSlots = ib.modules() ? Math.max(1, ...mStore.data.y.map((y) => 1 - y)) :
    Math.min(get(get(texts, ib.method), 'slots'), shown_slots);
  yr.start = -nSlots + 0.5;
  yr.end = 0.8;
  if (!ib.modules()) {
    ib.memberRows = [];
    nodes.data = Object.assign({}, nodeStore.data);
    return;
  }
  const md = mStore.data;
  const fd = nodeStore.data;
  const out = {};
  for (const k of ['x', 'y', 'layer', 'index', 'importance', 'module', 'color', 'size', 'marker',
    'label', 'key']) {
    out[k] = Array.from(md[k]);
  }
  ib.memberRows = ib.open === null ? [] : md.members[ib.open].split(',').map(Number);
  const n = ib.memberRows.length;
  const side = Math.max(1, Math.ceil(Math.sqrt(n)));
  ib.memberRows.forEach((r, k) => {
    out.x.push(md.x[ib.open] + 0.12 + 0.3 * (k % side) / side);
    out.y.push(md.y[ib.open] + 0.35 - 0.7 * Math.floor(k / side) / side);
    for (const c of ['layer', 'index', 'importance', 'module', 'color', 'marker', 'label', 'key']) {
      out[c].push(fd[c][r]);
    }
    out.size.push(Math.max(4, 0.7 * fd.size[r]));
  });
  nodes.data = out;
};

// The module view's edges: the summed ones, and for the open supernode its members' page
// edges summed per module at the other end (instead of the supernode's own).
ib.renderModules = () => {
  const [nodeStore, edgeStore, mStore, meStore] = ib.store();
  ib.fillNodes();
  const me = meStore.data;
  const md = mStore.data;
  const out = {x0: [], y0: [], x1: [], y1: [], weight: [], lw: [], alpha: []};
  const push = (x0, y0, x1, y1, w, lw, a) => {
    out.x0.push(x0); out.y0.push(y0); out.x1.push(x1); out.y1.push(y1);
    out.weight.push(w); out.lw.push(lw); out.alpha.push(a);
  };
  for (let i = 0; i < me.src.length; i++) {
    if (me.src[i] === ib.open || me.dst[i] === ib.open) continue;
    push(me.x0[i], me.y0[i], me.x1[i], me.y1[i], me.weight[i], me.lw[i], me.alpha[i]);
  }
  let text = '<b>Module view</b>: ' + md.x.length + ' supernodes (every module of every ' +
    'layer, and each layer\'s singletons as a diamond), sized by member count; ' +
    me.src.length + ' edges, each the sum of all edges between the two groups. Click a ' +
    'supernode for its members.';
  if (ib.open !== null) {
    const e = edgeStore.data;
    const fd = nodeStore.data;
    const shownRow = new Map(ib.memberRows.map((r, k) => [r, md.x.length + k]));
    const superOf = (r) => {
      const c = fd.module[r];
      return ib.mindex.get(fd.layer[r] + ':' + (c >= 0 ? 'm' + c : 'singletons'));
    };
    const sums = new Map();
    for (let i = 0; i < e.src.length; i++) {
      const [mine, other] = shownRow.has(e.src[i]) ? [e.src[i], e.dst[i]] :
        (shownRow.has(e.dst[i]) ? [e.dst[i], e.src[i]] : [null, null]);
      if (mine === null) continue;
      const s = superOf(other);
      if (s === undefined) continue;
      const k = mine + ',' + s;
      sums.set(k, (sums.get(k) ?? 0) + e.weight[i]);
    }
    const top = Math.max(1e-300, ...sums.values());
    for (const [k, w] of sums) {
      const [mine, s] = k.split(',').map(Number);
      const j = shownRow.get(mine);
      const t = Math.min(1, Math.max(0, 1 + Math.log10(w / top) / 4));
      push(nodes.data.x[j], nodes.data.y[j], md.x[s], md.y[s], w, 0.3 + 3 * t, 0.1 + 0.6 * t);
    }
    text = '<b>Module view</b>, ' + esc(md.label[ib.open]) + ' expanded: its ' +
      ib.memberRows.length + ' members drawn beside it, each with its page edges summed per ' +
      'module at the other end. Click the background to collapse. ' + text;
  }
  edges.data = out;
  focus.data = {x: [], y: [], size: [], fill: [], line: [], fa: [], lw: []};
  note.text = text;
  const fd = nodeStore.data;
  if (ib.msel !== null) {
    card.text = ib.cardOf(ib.msel);
  } else if (ib.open !== null) {
    const shown = ib.memberRows.slice(0, 12);
    const rest = ib.memberRows.slice(12);
    card.text = '<p><b>' + esc(md.label[ib.open]) + '</b>: ' + ib.memberRows.length +
      ' members, most important first' + (rest.length ? ' (the first ' + shown.length +
      ' as cards; the rest: ' + rest.map(ib.link).join(', ') + ')' : '') + '.</p>' +
      "<div class='members' style='display:flex;gap:8px;overflow-x:auto;align-items:flex-start'>" +
      shown.map((r) => "<div class='member' style='flex:0 0 300px;border-right:1px solid #ccc'>" +
        ib.cardOf(r) + '</div>').join('') + '</div>';
  } else {
    card.text = '<i>Click a supernode to see its members\' cards.</i>';
  }
  const want = ib.open !== null ? [ib.open] : [];
  if (JSON.stringify(want) !== JSON.stringify(Array.from(nodes.selected.indices))) {
    ib.busy = true;
    nodes.selected.indices = want;
    ib.busy = false;
  }
  ib.writeHash();
};

ib.render = () => {
  if (ib.modules()) { ib.renderModules(); return; }
  ib.fillNodes();
  const [nodeStore, edgeStore] = ib.store();
  const e = edgeStore.data;
  const nd = nodeStore.data;
  const t = get(texts, ib.method);
  // The overlay: neighbours filled with their share colour, path and search nodes ringed.
  const mark = new Map();
  const fill = (i, c) => mark.set(i, {fill: c, line: '#000', fa: 1.0, lw: 0.5});
  const ring = (i) => mark.set(i, {fill: '#000', line: '#000', fa: 0.0, lw: 2.0});
  const centre = ib.sel !== null ? ib.sel : (ib.pins.length ? null : ib.hover);
  let keep;
  let text;
  if (ib.pins.length >= 2) {
    const inner = ib.between(ib.massKept());
    keep = ib.massKept().filter((i) => inner.has(e.src[i]) && inner.has(e.dst[i]));
    for (const i of inner) ring(i);
    text = '<b>Path mode</b>: ' + keep.length + ' drawn edges (of those holding ' + mass.value +
      '% of each pair\'s weight) on paths between the ' + ib.pins.length + ' pinned nodes (' +
      ib.pins.map(ib.link).join(', ') + '), ' + inner.size + ' nodes. Shift-click pins ' +
      'more; a plain click leaves path mode.';
  } else if (centre !== null) {
    keep = [];
    let wIn = 0;
    let wOut = 0;
    for (let i = 0; i < e.src.length; i++) {
      if (e.dst[i] === centre) { keep.push(i); wIn += e.weight[i]; }
      else if (e.src[i] === centre) { keep.push(i); wOut += e.weight[i]; }
    }
    for (const i of keep) {
      const other = e.dst[i] === centre ? e.src[i] : e.dst[i];
      fill(other, shareColour(e.weight[i] / (e.dst[i] === centre ? wIn : wOut)));
    }
    ring(centre);
    text = '<b>Focus</b> on ' + ib.link(centre) + ': its ' + keep.length + ' edges in the page ' +
      '(all strengths); neighbours coloured by their share of its incoming or outgoing weight ' +
      '(light: small, dark red: large). Click the background to leave; shift-click pins nodes.';
  } else {
    keep = ib.massKept();
    const names = get(t, 'pairs');
    const totals = get(t, 'totals');
    const count = names.map(() => 0);
    const held = names.map(() => 0);
    for (const i of keep) {
      const p = e.pair[i];
      count[p] += 1;
      held[p] = Math.max(held[p], e.before[i] + e.weight[i] / totals[p]);
    }
    const parts = names.map((name, p) =>
      name + ': ' + count[p] + ' (' + (100 * held[p]).toFixed(1) + '%)');
    text = keep.length + ' edges drawn: the strongest of each layer pair up to ' + mass.value +
      '% of its weight (' + parts.join('; ') + ').';
  }
  if (ib.matches !== null) {
    for (const i of ib.matches) { if (!mark.has(i)) ring(i); }
    text = '<b>Search</b>: ' + ib.matches.length + ' match' +
      (ib.matches.length === 1 ? '' : 'es') + (ib.matches.length ? ': ' +
      ib.matches.slice(0, 20).map(ib.link).join(', ') + (ib.matches.length > 20 ? ', …' : '') :
      '') + '. ' + text;
  }
  const out = {};
  for (const k of Object.keys(e)) { out[k] = keep.map((i) => e[k][i]); }
  edges.data = out;
  const ids = [...mark.keys()];
  const m = ids.map((i) => mark.get(i));
  focus.data = {
    x: ids.map((i) => nd.x[i]), y: ids.map((i) => nd.y[i]),
    size: ids.map((i) => nd.size[i] + 4),
    fill: m.map((v) => v.fill), line: m.map((v) => v.line), fa: m.map((v) => v.fa),
    lw: m.map((v) => v.lw),
  };
  note.text = text + ' ' + get(t, 'drawn') + ' ' + get(t, 'hidden');
  if (ib.sel !== null) {
    let pinned = '';
    if (ib.pins.length) pinned = '<p><b>pinned</b>: ' + ib.pins.map(ib.link).join(', ') + '</p>';
    card.text = pinned + ib.cardOf(ib.sel);
  } else {
    card.text = '<i>Click a node to see its card; shift-click to pin nodes and see the paths ' +
      'between them.</i>';
  }
  const want = ib.pins.length ? ib.pins : (ib.sel !== null ? [ib.sel] : []);
  if (JSON.stringify(want) !== JSON.stringify(nodes.selected.indices)) {
    ib.busy = true;
    nodes.selected.indices = want;
    ib.busy = false;
  }
  ib.writeHash();
};

ib.writeHash = () => {
  const key = (i) => ib.store()[0].data.key[i];
  let h = 'm=' + encodeURIComponent(ib.method);
  if (ib.modules()) {
    h += '&v=modules';
    if (ib.open !== null) h += '&open=' + encodeURIComponent(ib.store()[2].data.key[ib.open]);
  }
  if (ib.sel !== null) h += '&sel=' + encodeURIComponent(key(ib.sel));
  if (ib.pins.length) h += '&pins=' + ib.pins.map((i) => encodeURIComponent(key(i))).join(',');
  h = h.replace(/%3A/g, ':');
  if (window.location.hash !== '#' + h) history.replaceState(null, '', '#' + h);
};

ib.readHash = () => {
  const h = new URLSearchParams(window.location.hash.slice(1));
  const m = h.get('m');
  if (m !== null && methods.includes(m) && m !== ib.method) ib.switchMethod(m);
  // A feature link (`sel`, e.g. from a member list) opens the feature view.
  const v = h.has('sel') || h.has('pins') ? 0 : (h.get('v') === 'modules' ? 1 : view.active);
  if (v !== view.active) { ib.busy = true; view.active = v; ib.busy = false; }
  if (h.has('open') && ib.mindex.has(h.get('open'))) {
    ib.open = ib.mindex.get(h.get('open'));
    ib.msel = null;
  }
  if (h.has('sel')) ib.sel = ib.rowOf(h.get('sel'));
  if (h.has('pins')) {
    ib.pins = h.get('pins').split(',').map(ib.rowOf).filter((i) => i !== null);
  }
  ib.render();
};

ib.update = () => {
  if (ib.busy) return;
  const m = methods[method.active];
  if (m !== ib.method) ib.switchMethod(m);
  if (ib.lastView !== view.active) { ib.open = null; ib.msel = null; }
  ib.lastView = view.active;
  ib.render();
};

ib.onSelect = () => {
  if (ib.busy) return;
  const ind = nodes.selected.indices;
  if (ib.modules()) {
    const nSuper = ib.store()[2].data.x.length;
    const i = ind.length ? ind[ind.length - 1] : null;
    if (i === null) { ib.open = null; ib.msel = null; }
    else if (i < nSuper) { ib.open = i; ib.msel = null; }
    else { ib.msel = ib.memberRows[i - nSuper]; }
    ib.render();
    return;
  }
  if (ind.length === 0) { ib.sel = null; ib.pins = []; }
  else if (ind.length === 1) { ib.sel = ind[0]; ib.pins = []; }
  else { ib.pins = Array.from(ind); ib.sel = ind[ind.length - 1]; }
  ib.render();
};

ib.onHover = (i) => {
  if (ib.modules()) return;
  if (i === ib.hover || ib.sel !== null || ib.pins.length) return;
  ib.hover = i;
  ib.render();
};

// `layer:index` selects that node; `module N` finds the module's nodes; anything else finds
// the nodes whose label holds the text (Fourier term, head role, class, ...), case-blind.
ib.search = (query) => {
  const q = query.trim();
  const d = ib.store()[0].data;
  if (q && ib.modules()) { ib.busy = true; view.active = 0; ib.busy = false; }
  ib.lastView = view.active;
  ib.matches = null;
  if (!q) { ib.render(); return; }
  const exact = ib.rowOf(q.replace(/\s*[:#]\s*/, ':').replace(/\s+/, ':'));
  const mod = q.match(/^(?:module|m)\s*(-?\d+)$/i);
  if (exact !== null) {
    ib.sel = exact;
    ib.pins = [];
  } else if (mod) {
    const c = Number(mod[1]);
    ib.matches = d.module.map((v, i) => (v === c ? i : -1)).filter((i) => i >= 0);
  } else {
    const low = q.toLowerCase();
    ib.matches = d.label.map((v, i) => (String(v).toLowerCase().includes(low) ? i : -1))
      .filter((i) => i >= 0);
  }
  if (ib.matches !== null && ib.matches.length) { ib.sel = ib.matches[0]; ib.pins = []; }
  ib.render();
};

window.addEventListener('hashchange', ib.readHash);
ib.lastView = view.active;
ib.switchMethod(methods[method.active]);
ib.readHash();
ib.preload();
