// Runs when the page is ready, on a method switch and on a slider move. Arguments (see
// build_page): the shown `nodes`/`edges` sources, the per-method stores (`stores`, defined
// just before this code), the widgets, and per-method texts and layer names. Bokeh may hand
// dict arguments to JavaScript as Map or as plain objects: get() reads both.
const get = (o, k) => (o instanceof Map ? o.get(k) : o[k]);
const m = methods[method.active];
const [nodeStore, edgeStore] = stores[m];
const t = get(texts, m);
if (window.ibMethod !== m) {
  nodes.data = Object.assign({}, nodeStore.data);
  nodes.selected.indices = [];
  card.text = '<i>Click a node to see its card.</i>';
  legend.text = get(t, 'legend');
  headline.text = get(t, 'headline');
  const over = {};
  get(layers, m).forEach((name, i) => { over[i] = name; });
  axis.major_label_overrides = over;
  window.ibMethod = m;
}
const e = edgeStore.data;
const x = mass.value / 100;
const keep = [];
for (let i = 0; i < e.before.length; i++) { if (e.before[i] < x) keep.push(i); }
const out = {};
for (const k of Object.keys(e)) { out[k] = keep.map(i => e[k][i]); }
edges.data = out;
// What is drawn, per layer pair: its count and the share of its weight it holds (the
// share before the last kept edge plus that edge's own).
const names = get(t, 'pairs');
const totals = get(t, 'totals');
const count = names.map(() => 0);
const held = names.map(() => 0);
for (const i of keep) {
  const p = e.pair[i];
  count[p] += 1;
  held[p] = Math.max(held[p], e.before[i] + e.weight[i] / totals[p]);
}
const parts = names.map((n, p) => n + ': ' + count[p] + ' (' + (100 * held[p]).toFixed(1) + '%)');
note.text = keep.length + ' edges drawn: the strongest of each layer pair up to ' + mass.value +
  '% of its weight (' + parts.join('; ') + '). ' + get(t, 'drawn');
