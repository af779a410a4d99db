// A tap on a node: show its card (the HTML is built in Python, one per node).
const i = nodes.selected.indices[0];
if (i !== undefined) { card.text = nodes.data.card[i]; }
