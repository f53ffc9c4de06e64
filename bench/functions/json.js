// Renders a JSON document from data on every request (a typical API).
export default {
  async fetch(request) {
    const url = new URL(request.url);
    const n = Number(url.searchParams.get("n") || 50);
    const items = [];
    for (let i = 0; i < n; i++) items.push({ id: i, name: `item ${i}`, price: Math.round(i * 125) / 100, tags: ["a", "b"] });
    return Response.json({ count: n, items });
  },
};
