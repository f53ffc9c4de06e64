// JSON in and out, and an HTML page rendered from data.
const items = Array.from({ length: 20 }, (_, i) => ({ id: i, name: `item ${i}`, price: (i * 1.25).toFixed(2) }));
export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/render") {
      const rows = items.map((it) => `<tr><td>${it.id}</td><td>${it.name}</td><td>${it.price}</td></tr>`).join("");
      return new Response(`<!doctype html><table>${rows}</table>`, { headers: { "content-type": "text/html; charset=utf-8" } });
    }
    if (url.pathname === "/api") {
      return Response.json({ items: items.slice(0, 5), total: items.length, nested: { a: [1, 2, { b: null }] } });
    }
    if (url.pathname === "/transform" && request.method === "POST") {
      let data;
      try {
        data = await request.json();
      } catch (e) {
        return new Response("bad json", { status: 400 });
      }
      const out = Object.fromEntries(Object.entries(data).map(([k, v]) => [k.toUpperCase(), typeof v === "number" ? v * 2 : v]));
      return Response.json(out, { status: 201, headers: { "x-keys": String(Object.keys(out).length) } });
    }
    return new Response("no", { status: 404 });
  },
};
