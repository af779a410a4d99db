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
note.text = keep.length + ' edges drawn (the strongest, holding ' + mass.value +
  '% of the weight). ' + get(t, 'drawn');
